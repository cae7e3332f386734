"""Shared fixtures: tiny IDX data sets written by the tests, and configs composed into tmp_path."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from study.training.data_files import IDX_FILES, write_idx
from tests.helpers import (
    TINY_MODEL_OVERRIDES,
    TINY_SIZES,
    TINY_SPACE,
    TINY_VALIDATION,
    compose_config,
    synthetic_digits,
)


def pytest_configure(config):
    """The tests send Ctrl-C (SIGINT) to the commands they start. A shell that starts the suite
    in the background (`cmd &` without job control) makes it ignore SIGINT, and an ignored
    signal stays ignored in every child: restore it, so the children are as a terminal's."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-idx")
    for split, seed in (("train", 1), ("test", 2)):
        images, labels = synthetic_digits(TINY_SIZES[split], seed)
        write_idx(folder / f"{IDX_FILES[f'x_{split}']}.gz", images)
        write_idx(folder / f"{IDX_FILES[f'y_{split}']}.gz", labels)
    return folder


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


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX folder that CI passes in as STUDY_MNIST_DIR."""
    folder = os.environ.get("STUDY_MNIST_DIR")
    if not folder:
        pytest.skip("set STUDY_MNIST_DIR to a folder with the four MNIST IDX .gz files")
    return Path(folder)


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
        # One trial per configuration, as these tests count them; tests/e2e/test_asha_studies.py adds asha.
        "scheduler=none",
    ]
    return tmp_path, overrides
