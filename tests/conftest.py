"""Shared fixtures: tiny IDX data sets written by the tests, and configs composed into tmp_path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from study.config.schema import CONFIG_DIR
from study.training.data import IDX_FILES, write_idx

IMAGE_SIZE = 12
NUM_CLASSES = 10
# Small enough to train in a second, large enough for the models to learn something.
TINY_SIZES = {"train": 400, "test": 100}
TINY_VALIDATION = 100


def pytest_configure(config):
    """The tests send Ctrl-C (SIGINT) to the commands they start. A shell that starts the suite
    in the background (`cmd &` without job control) makes it ignore SIGINT, and an ignored
    signal stays ignored in every child: restore it, so the children are as a terminal's."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class lights a different row band, with noise: learnable by all three models."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row = label % IMAGE_SIZE
        image[row, :] = 255
        image[:, (label * 7) % IMAGE_SIZE] = 200
    return images, labels


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-idx")
    for split, seed in (("train", 1), ("test", 2)):
        images, labels = synthetic_digits(TINY_SIZES[split], seed)
        write_idx(folder / f"{IDX_FILES[f'x_{split}']}.gz", images)
        write_idx(folder / f"{IDX_FILES[f'y_{split}']}.gz", labels)
    return folder


TINY_MODEL_OVERRIDES = {
    "softmax": ["model=softmax"],
    "mlp": ["model=mlp", "model.hidden1_units=16", "model.hidden2_units=8"],
    "cnn": ["model=cnn", "model.filters1=4", "model.filters2=8", "model.dense_units=16"],
}


@pytest.fixture
def make_config(tmp_path, tiny_idx_dir) -> Callable[..., DictConfig]:
    """Compose the train config as a user would, pointed at tiny data and a store in tmp_path."""

    def make(*overrides: str, model: str | None = "cnn", config_name: str = "train") -> DictConfig:
        base = [
            f"runs_dir={tmp_path / 'runs'}",
            f"data.path={tiny_idx_dir}",
            f"data.validation_size={TINY_VALIDATION}",
            "trainer.epochs=2",
            "trainer.batch_size=32",
            "trainer.verbose=0",
            *(TINY_MODEL_OVERRIDES[model] if model else []),  # None: the config's own model
        ]
        return compose_config(config_name, [*base, *overrides])

    return make


def compose_config(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=overrides)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX folder that CI passes in as STUDY_MNIST_DIR."""
    folder = os.environ.get("STUDY_MNIST_DIR")
    if not folder:
        pytest.skip("set STUDY_MNIST_DIR to a folder with the four MNIST IDX .gz files")
    return Path(folder)


# A small space the tiny data trains in a second per trial.
TINY_SPACE = """\
# Test space: two optimizers, a learning rate, and dropout for the MLP only.
model: {type: categorical, choices: [softmax, mlp]}
optimizer: {type: categorical, choices: [sgd, adam]}
optimizer.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
model.dropout_rate: {type: float, low: 0.0, high: 0.5, when: {model: [mlp]}}
"""


@pytest.fixture
def sweep_setup(tmp_path, tiny_idx_dir):
    """Overrides for a tiny study whose stores all live in tmp_path."""
    extra_conf = tmp_path / "conf"
    (extra_conf / "search_space").mkdir(parents=True)
    (extra_conf / "search_space" / "tiny.yaml").write_text(TINY_SPACE)
    overrides = [
        f"hydra.searchpath=[file://{extra_conf}]",
        "search_space=tiny",
        f"runs_dir={tmp_path / 'runs'}",
        f"data.path={tiny_idx_dir}",
        f"data.validation_size={TINY_VALIDATION}",
        "model=mlp",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "study.heartbeat_interval=1",
        # One trial per configuration, as these tests count them; tests/test_asha.py adds asha.
        "scheduler=none",
    ]
    return tmp_path, overrides


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for servers the tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(module: str, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m study.MODULE ARGS` as a user runs it: a fresh process in `cwd`, with Hydra's
    default error reporting (the commands themselves turn errors into one line)."""
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", f"study.{module}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )
