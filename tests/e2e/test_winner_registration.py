"""A driver killed while it registers the study's winner, with real processes and a real
SIGKILL: the same command finishes the registration, and the study keeps its invariants."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus

from study.core.names import BEST_RUN_TAG, CHECKPOINT_TAG, MODEL_URI_TAG, STUDY_ROLE_TAG, WINNER_TAG
from tests.e2e.test_crash_safety import check_invariants, read_only, start_sweep, sweep

N_TRIALS = 2
NAME = "crashy"


def first_version(database: Path, driver, timeout: float = 300.0) -> tuple[int, str | None]:
    """Poll the tracking store as fast as it answers; return the first version of NAME and its
    description the moment it exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert driver.poll() is None, "the driver ended before it registered the winner"
        if database.exists():
            try:
                with read_only(database) as connection:
                    row = connection.execute(
                        "SELECT version, description FROM model_versions WHERE name = ?", (NAME,)
                    ).fetchone()
            except sqlite3.OperationalError:  # tables not made yet, or locked for a moment
                row = None
            if row:
                return row
        time.sleep(0.002)
    raise AssertionError("no version registered")


@pytest.mark.slow
def test_a_driver_killed_the_moment_it_registers_the_winner_is_completed_by_a_rerun(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += [f"study.n_trials={N_TRIALS}", "pruner=none", "trainer.epochs=1"]
    overrides += [f"study.registered_model={NAME}"]
    database = tmp_path / "runs" / "mlflow.db"
    driver = start_sweep(overrides, tmp_path)
    try:
        version, description = first_version(database, driver)
        os.killpg(driver.pid, signal.SIGKILL)  # driver and workers, before it describes the version
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert (version, description) == (1, None), "the kill came after the version was described"

    rerun = sweep(overrides, tmp_path)  # resumes, sees the study done and finishes it again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    check_invariants(tmp_path, n_trials=N_TRIALS)
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    (registered,) = client.search_model_versions(f"name = '{NAME}'")
    assert str(registered.version) == "1" and registered.description.startswith(
        "Winner of study default: trial "
    )
    assert {"study", "trial", "val_accuracy", "test_accuracy", CHECKPOINT_TAG} <= set(registered.tags)
    experiment_id = client.get_experiment_by_name("study").experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string=f"tags.`{STUDY_ROLE_TAG}` = 'parent'")
    winner = client.get_run(registered.run_id)
    assert parent.data.tags[BEST_RUN_TAG] == winner.info.run_id
    assert winner.data.tags[WINNER_TAG] == "true" and winner.data.tags[MODEL_URI_TAG] == f"models:/{NAME}/1"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # named by the rerun
    logged = client.search_logged_models([experiment_id])
    assert [model.status for model in logged] == [LoggedModelStatus.READY]
    assert registered.source == f"models:/{logged[0].model_id}"
