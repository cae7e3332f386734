"""What the tests of studies on clusters (Slurm, Ray) and of silent workers share: a driver
started as a user starts it, the study's trials read while it runs, and the invariants of a
finished study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from study.core.names import (
    MLFLOW_RUN_ATTR,
    NOT_NEEDED_ATTR,
    RETRY_FAILED_TRIAL_ATTR,
    STATE_TAG,
    STUDY_ROLE_TAG,
)
from tests.helpers import TrackingServer, point_of

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def start_sweep(overrides: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m study.sweep` in its own process group, its output kept."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *overrides],
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def trials_of(storage: str, name: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        return []  # not created yet, or its tables are being made right now


def training(storage: str, name: str) -> list[FrozenTrial]:
    """The RUNNING trials that reported an epoch."""
    return [t for t in trials_of(storage, name) if t.state == TrialState.RUNNING and t.intermediate_values]


def early_in_training(storage: str, name: str) -> FrozenTrial | None:
    """A trial at most 5 epochs in: seconds of training left, so a signal or a kill sent now
    finds it still training (one nearer its end could finish first, and nothing be lost)."""
    return next((t for t in training(storage, name) if len(t.intermediate_values) <= 5), None)


def check_finished_study(storage: str, name: str, server: TrackingServer, n_trials: int) -> list[FrozenTrial]:
    """Exactly n_trials done, nothing RUNNING, one parent run (FINISHED), run states match."""
    trials = trials_of(storage, name)
    assert sum(t.state in DONE for t in trials) == n_trials
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("study")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`study.name` = '{name}'")
    assert [run.info.status for run in runs if run.data.tags.get(STUDY_ROLE_TAG) == "parent"] == ["FINISHED"]
    assert not [run.info.run_id for run in runs if run.info.status in ("RUNNING", "SCHEDULED")]
    by_run = {t.user_attrs[MLFLOW_RUN_ATTR]: t for t in trials if MLFLOW_RUN_ATTR in t.user_attrs}
    for run in runs:
        if run.info.run_id in by_run:
            trial = by_run[run.info.run_id]
            assert run.data.tags[STATE_TAG] == trial.state.name, (trial.number, trial.user_attrs, run.info)
    return trials


def assert_lost_trials_retried(trials: list[FrozenTrial]) -> list[int]:
    """Some trial was lost (failed, not one that lost the race for the last places), and each
    lost one was retried: which one a signal or a kill caught is up to timing."""
    lost = [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(NOT_NEEDED_ATTR)]
    assert lost
    for number in lost:
        assert_retried(trials, number)
    return lost


def assert_retried(trials: list[FrozenTrial], number: int) -> None:
    """Trial `number` failed, and exactly one retry of it is done, with its parameters. A retry
    can be lost too (a task cancelled twice): Optuna's retry of a retry points back at the first
    trial, so the done one is found among the first trial's retries that came after `number`."""
    lost = trials[number]
    assert lost.state == TrialState.FAIL
    first = lost.system_attrs.get(RETRY_FAILED_TRIAL_ATTR, number)
    later = [t for t in trials if t.number > number and t.system_attrs.get(RETRY_FAILED_TRIAL_ATTR) == first]
    done = [t for t in later if t.state in DONE]
    assert len(done) == 1, [(t.number, t.state.name) for t in later]
    expected = point_of(lost)  # none for a new trial lost before it sampled
    if expected:
        assert done[0].params == expected, (done[0].params, expected)


def cluster_overrides(
    base: list[str], storage: str, server: TrackingServer, n_trials: int, epochs: int
) -> list[str]:
    """A tiny study on PostgreSQL and a tracking server, its trials long enough to act on one
    mid-trial (several seconds each)."""
    return [
        *base,
        f"study.storage={storage}",
        f"mlflow.tracking_uri={server.url}",
        f"study.n_trials={n_trials}",
        f"trainer.epochs={epochs}",
        "pruner=none",
    ]
