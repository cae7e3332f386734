"""The confirmation's bookkeeping on a real MLflow store (SQLite), without training: which seeds
count as done, what a driver that died mid-confirmation left RUNNING, and its settings."""

from __future__ import annotations

import subprocess

import optuna
import pytest
from mlflow import MlflowClient

from study.config.checks import checked_sweep_config
from study.core.errors import ConfigError
from study.core.names import (
    CONFIRMATION_DRIVER_TAG,
    CONFIRMATION_OF_TAG,
    CONFIRMATION_SEED_TAG,
    CONFIRMATION_TRIAL_TAG,
    MLFLOW_RUN_ATTR,
)
from study.core.processes import process_identity
from study.execution.confirmation import confirm_best, finished_seeds
from study.execution.recovery import end_orphaned_runs
from study.tracking.runs import RunTracker
from tests.helpers import compose_config


@pytest.fixture
def parent(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    return RunTracker(client, client.create_run(experiment).info.run_id)


def confirmation_run(
    parent: RunTracker, seed: int, driver: str, status: str, score: float | None = None
) -> str:
    """A confirmation run of trial 3 as a driver leaves it."""
    tags = {
        "mlflow.parentRunId": parent.run_id,
        CONFIRMATION_OF_TAG: "the-run-of-trial-3",
        CONFIRMATION_TRIAL_TAG: "3",
        CONFIRMATION_SEED_TAG: str(seed),
        CONFIRMATION_DRIVER_TAG: driver,
    }
    experiment_id = parent.client.get_run(parent.run_id).info.experiment_id
    run_id = parent.client.create_run(experiment_id, tags=tags).info.run_id
    if score is not None:
        parent.client.log_metric(run_id, "best_val_accuracy", score)
    if status != "RUNNING":
        parent.client.set_terminated(run_id, status)
    return run_id


def gone_driver() -> str:
    """host:pid of a process of this machine that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process_identity().rsplit(":", 1)[0] + f":{process.pid}"


def test_finished_seeds_count_and_a_dead_drivers_run_is_ended_killed(parent):
    finished = confirmation_run(parent, 43, process_identity(), "FINISHED", 0.97)
    confirmation_run(parent, 43, process_identity(), "FINISHED", 0.50)  # a second driver's, later: ignored
    failed = confirmation_run(parent, 44, process_identity(), "FAILED")
    abandoned = confirmation_run(parent, 45, gone_driver(), "RUNNING")
    live = confirmation_run(parent, 46, process_identity(), "RUNNING")  # another driver, still training

    # 45 and 46 are trained (again); 44 failed (a NaN loss fails again) and is left out
    assert finished_seeds(parent, 3) == ({43: 0.97}, {44})
    status = {
        run_id: parent.client.get_run(run_id).info.status for run_id in (finished, failed, abandoned, live)
    }
    assert status == {finished: "FINISHED", failed: "FAILED", abandoned: "KILLED", live: "RUNNING"}
    assert finished_seeds(parent, 4) == ({}, set())


def test_a_study_that_ends_ends_the_confirmation_runs_of_gone_drivers_only(parent):
    """A driver killed mid-confirmation, then the plain command: its run ends KILLED; a live
    driver's confirmation run is left to it."""
    abandoned = confirmation_run(parent, 45, gone_driver(), "RUNNING")
    live = confirmation_run(parent, 46, process_identity(), "RUNNING")
    assert end_orphaned_runs(optuna.create_study(), parent) == 1
    assert parent.client.get_run(abandoned).info.status == "KILLED"
    assert parent.client.get_run(live).info.status == "RUNNING"


def test_confirmation_is_off_by_default_and_waits_for_the_search(parent, capsys):
    settings = checked_sweep_config(compose_config("sweep", []))
    assert (settings.study.confirm_top, settings.study.confirm_seeds) == (0, 3)
    confirm_best(None, settings, None, parent, search_done=True)  # off: touches nothing
    on = checked_sweep_config(compose_config("sweep", ["study.confirm_top=2"]))
    confirm_best(None, on, None, parent, search_done=False)
    assert "not yet: the search is not done" in capsys.readouterr().out


def test_a_configuration_that_cannot_be_confirmed_leaves_the_study_to_finish(parent, capsys):
    """Its run has no config.yaml (lost, or a store refusing): one line, the next one goes on."""
    study = optuna.create_study()
    for value in (0.9, 0.8):
        run_id = confirmation_run(parent, 1, "", "FINISHED")  # any run without a config.yaml
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={MLFLOW_RUN_ATTR: run_id}))
    settings = checked_sweep_config(compose_config("sweep", ["study.confirm_top=2", "study.confirm_seeds=1"]))
    confirm_best(study, settings, settings, parent, search_done=True)
    out = capsys.readouterr().out
    assert "trial 0: not confirmed: " in out and "trial 1: not confirmed: " in out
    assert not any(key.startswith("confirmation.") for key in study.user_attrs)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("study.confirm_top=-1", "study.confirm_top: expected an integer >= 0, got -1"),
        ("study.confirm_seeds=-2", "study.confirm_seeds: expected an integer >= 0, got -2"),
    ],
)
def test_confirmation_settings_are_checked_in_one_line(override, expected):
    with pytest.raises(ConfigError) as caught:
        checked_sweep_config(compose_config("sweep", [override]))
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
