"""Helpers the tests share: tiny synthetic data, configs composed from conf/, free ports and
commands run as a user runs them. Fixtures built on them live in conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from study.config.checks import checked_config
from study.config.schema import CONFIG_DIR

IMAGE_SIZE = 12


NUM_CLASSES = 10


# Small enough to train in a second, large enough for the models to learn something.
TINY_SIZES = {"train": 400, "test": 100}


TINY_VALIDATION = 100


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


TINY_MODEL_OVERRIDES = {
    "softmax": ["model=softmax"],
    "mlp": ["model=mlp", "model.hidden1_units=16", "model.hidden2_units=8"],
    "cnn": ["model=cnn", "model.filters1=4", "model.filters2=8", "model.dense_units=16"],
}


def compose_config(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=overrides)


# A small space the tiny data trains in a second per trial.
TINY_SPACE = """\
# Test space: two optimizers, a learning rate, and dropout for the MLP only.
model: {type: categorical, choices: [softmax, mlp]}
optimizer: {type: categorical, choices: [sgd, adam]}
optimizer.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
model.dropout_rate: {type: float, low: 0.0, high: 0.5, when: {model: [mlp]}}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for servers the tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(
    module: str, *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m study.MODULE ARGS` as a user runs it: a fresh process in `cwd` (with `env` on
    top of this one's environment), with Hydra's default error reporting (the commands
    themselves turn errors into one line)."""
    # Not inherited from this test process: Hydra's full errors, and the tracking URI that
    # mlflow.set_tracking_uri exports to the environment when an earlier test called it.
    inherited = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    env = {**inherited, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"study.{module}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


class TrackingServer:
    """A real `mlflow server` process on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, backend: str, artifacts: Path):
        self.backend, self.artifacts = backend, artifacts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend]
        command += ["--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        self.log = self.artifacts.parent / f"mlflow-server-{self.port}.log"
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, f"mlflow server exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def stores(tmp_path):
    runs = tmp_path / "runs"
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    return runs, client


def load(tmp_path, name="default"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'runs'}/optuna.db")


def all_runs(client):
    experiment = client.get_experiment_by_name("study")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def sweep_command(overrides):
    return [sys.executable, "-m", "study.sweep", *overrides]


def wait_for(condition, timeout=120.0, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def start_in_own_session(overrides, tmp_path) -> subprocess.Popen:
    """A sweep in its own process group, so a test can signal driver and workers together."""
    return subprocess.Popen(
        sweep_command(overrides),
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def client_for(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=checked_config(cfg).mlflow.tracking_uri)


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def worker_pids(tmp_path: Path) -> list[int]:
    """Live `study.worker` processes of this test's study (their spec files are under tmp_path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        ours = b"study.worker" in command and any(str(tmp_path).encode() in part for part in command)
        if ours and state != "Z":
            pids.append(int(entry.name))
    return pids


def point_of(trial: FrozenTrial) -> dict:
    """The point a trial tries: its params, or the enqueued ones it had not sampled yet (a
    trial lost before it sampled, or a retry still WAITING, holds them as fixed_params)."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def assert_retried(study: optuna.Study, number: int) -> None:
    trials = study.get_trials()
    assert trials[number].state == TrialState.FAIL
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == number]
    assert len(retries) == 1
    expected = point_of(trials[number])  # the same point again
    if expected:
        assert point_of(retries[0]) == expected
