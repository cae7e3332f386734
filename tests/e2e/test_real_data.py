"""Real MNIST (the folder CI passes as STUDY_MNIST_DIR) and the JAX backend."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from study.training.run import train
from tests.helpers import compose_config


def mnist_config(mnist_dir, tmp_path, *overrides):
    return compose_config(
        "train", [f"data.path={mnist_dir}", f"runs_dir={tmp_path / 'runs'}", "trainer.verbose=0", *overrides]
    )


def test_softmax_one_epoch_on_mnist_passes_90_percent(mnist_dir, tmp_path):
    metrics = train(mnist_config(mnist_dir, tmp_path, "model=softmax", "trainer.epochs=1"))
    assert metrics["test_accuracy"] >= 0.90
    assert metrics["epochs"] == 1


@pytest.mark.slow
def test_deep_mnist_cnn_three_epochs_passes_99_percent(mnist_dir, tmp_path):
    metrics = train(mnist_config(mnist_dir, tmp_path, "model=cnn", "trainer.epochs=3"))
    assert metrics["test_accuracy"] >= 0.99


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_same_command_runs_on_the_jax_backend(tmp_path, tiny_idx_dir):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "study.train",
            f"runs_dir={tmp_path / 'runs'}",
            f"data.path={tiny_idx_dir}",
            "data.validation_size=100",
            "model=mlp",
            "trainer.epochs=1",
            "trainer.verbose=0",
        ],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs'}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["keras.backend"] == "jax"
    assert "versions.jax" in run.data.tags
