"""Runs started together share nothing they must not: each `study.train` gets an output folder
of its own and logs only its own files, and processes that start together on a new or an
existing SQLite MLflow store all finish. `--multirun` output stays under runs/."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.helpers import TINY_VALIDATION, all_runs, run_command

RUNS_AT_ONCE = 5


def tiny_train_args(data: Path) -> list[str]:
    return [
        f"data.path={data}",
        f"data.validation_size={TINY_VALIDATION}",
        "model=softmax",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.verbose=0",
    ]


def train_together(cwd: Path, data: Path, seeds: range) -> None:
    """`python -m study.train` once per seed, all started at once, as a user's shell does."""
    # As tests.helpers.run_command: not this test process's Hydra or MLflow settings.
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "study.train", *tiny_train_args(data), f"trainer.seed={seed}"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in seeds
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_each_run_logged_its_own_files(client: MlflowClient, runs: list, artifacts: Path) -> None:
    assert {run.info.status for run in runs} == {"FINISHED"}
    checkpoints = set()
    writers = set()
    for run in runs:
        folder = artifacts / run.info.run_id / "artifacts"
        # The config.yaml it logged is its own: its seed, and it replays this run.
        logged = yaml.safe_load((folder / "config.yaml").read_text())
        assert str(logged["trainer"]["seed"]) == run.data.params["trainer.seed"]
        assert logged["mlflow"]["tags"]["replay_of"] == run.info.run_id
        events = list((folder / "tensorboard").iterdir())
        assert len(events) == 1, events  # one run's event file, not every run's of that second
        writers.add(events[0].name)
        checkpoints.add(digest(folder / "checkpoints" / "best.keras"))
    assert len(writers) == len(runs)
    assert len(checkpoints) == len(runs)  # every run its own best.keras (seeds differ)


@pytest.mark.slow
def test_runs_started_together_on_a_new_then_an_existing_store_all_finish_alone(tmp_path, tiny_idx_dir):
    runs_dir = tmp_path / "runs"
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    for batch in range(2):  # a new store (made and migrated once), then the same store again
        seeds = range(batch * RUNS_AT_ONCE, (batch + 1) * RUNS_AT_ONCE)
        train_together(tmp_path, tiny_idx_dir, seeds)
        runs = all_runs(client)
        assert len(runs) == (batch + 1) * RUNS_AT_ONCE
        assert_each_run_logged_its_own_files(client, runs, runs_dir / "mlartifacts")
        # A Hydra output folder per run, even for runs started in the same second.
        assert len(list((runs_dir / "hydra" / "train").glob("*/.hydra"))) == len(runs)


def test_multirun_output_stays_under_runs(tmp_path, tiny_idx_dir):
    done = run_command("train", "-m", *tiny_train_args(tiny_idx_dir), "trainer.seed=1,2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # no ./multirun
    jobs = sorted((tmp_path / "runs" / "hydra" / "multirun").glob("*/*/.hydra"))
    assert [job.parent.name for job in jobs] == ["0", "1"]
    runs = all_runs(MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db"))
    assert {run.data.params["trainer.seed"] for run in runs} == {"1", "2"}
    assert {run.info.status for run in runs} == {"FINISHED"}
