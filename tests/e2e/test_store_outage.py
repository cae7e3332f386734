"""A database outage mid-study, with real processes: PostgreSQL, holding both the Optuna
storage and the MLflow tracking store, stopped (`pg_ctl -m fast stop`, which drops every
session) while two workers train, then started again on the same port. Shorter than
study.store_retry_seconds it costs nothing; longer, the session ends with one line naming the
store and the cause, and the same command finishes the study. Marked slow: CI runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from study.core.names import FAIL_REASON_ATTR, MLFLOW_RUN_ATTR, STATE_TAG, STUDY_ROLE_TAG
from tests.e2e.conftest import PASSWORD
from tests.helpers import wait_for, worker_pids

pytestmark = pytest.mark.slow

N_TRIALS = 4
EPOCHS = 4
OUTAGE_SECONDS = 20
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def outage_overrides(sweep_setup, url: str, name: str) -> tuple[Path, list[str]]:
    tmp_path, overrides = sweep_setup
    return tmp_path, [
        *overrides,
        f"study.name={name}",
        f"study.storage={url}/optuna",
        f"mlflow.tracking_uri={url}/mlflow",
        f"mlflow.experiment_name={name}",
        f"study.n_trials={N_TRIALS}",
        "study.n_workers=2",
        "pruner=none",
        f"trainer.epochs={EPOCHS}",  # each trial spans several reports to the storage
    ]


def start_sweep(overrides: list[str], tmp_path: Path, console: Path) -> subprocess.Popen:
    with console.open("a") as output:  # a file, not a pipe nobody reads while the test waits
        return subprocess.Popen(
            [sys.executable, "-m", "study.sweep", *overrides],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def trial_running_with_run(storage: str, name: str) -> bool:
    """A trial is training, its MLflow run recorded: the outage hits the study mid-trial."""
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # the study is not created yet
        return False
    return any(t.state == TrialState.RUNNING and MLFLOW_RUN_ATTR in t.user_attrs for t in trials)


def stop_mid_study(cluster, storage: str, name: str, seconds: float) -> None:
    wait_for(lambda: trial_running_with_run(storage, name), timeout=180, interval=0.5)
    cluster.stop()
    time.sleep(seconds)


def check_invariants(url: str, name: str, tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    """What every study that went through an outage must look like in both stores."""
    trials = optuna.load_study(study_name=name, storage=f"{url}/optuna").get_trials()
    assert sum(t.state in DONE for t in trials) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(tracking_uri=f"{url}/mlflow")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    assert not [run for run in runs if run.info.status in ("RUNNING", "SCHEDULED")]
    parents = [run for run in runs if run.data.tags.get(STUDY_ROLE_TAG) == "parent"]
    assert len(parents) == 1
    children = {run.info.run_id: run for run in runs if run not in parents}
    for trial in trials:
        if MLFLOW_RUN_ATTR in trial.user_attrs:
            run = children[trial.user_attrs[MLFLOW_RUN_ATTR]]
            assert run.data.tags[STATE_TAG] == trial.state.name
            assert run.info.status in (("FINISHED",) if trial.state in DONE else ("FAILED", "KILLED"))
        if trial.state == TrialState.COMPLETE:  # acknowledged: every epoch is in MLflow
            history = client.get_metric_history(trial.user_attrs[MLFLOW_RUN_ATTR], "val_accuracy")
            assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1))
    assert not worker_pids(tmp_path), "no worker outlives its driver"
    return trials


def test_postgresql_down_for_20_seconds_mid_study_costs_nothing(sweep_setup, postgres_cluster):
    url = postgres_cluster.url
    tmp_path, overrides = outage_overrides(sweep_setup, url, "restart")
    console = tmp_path / "console.txt"
    driver = start_sweep(overrides, tmp_path, console)
    try:
        stop_mid_study(postgres_cluster, f"{url}/optuna", "restart", OUTAGE_SECONDS)
    finally:
        postgres_cluster.start()
    assert driver.wait(timeout=600) == 0, console.read_text()[-3000:]

    trials = check_invariants(url, "restart", tmp_path)
    failed = {t.number: t.user_attrs.get(FAIL_REASON_ATTR) for t in trials if t.state == TrialState.FAIL}
    assert not failed, f"the outage failed trials: {failed}"
    assert len(trials) == N_TRIALS
    logs = [console, *(tmp_path / "runs" / "studies" / "restart" / "logs").glob("worker_*.log")]
    text = "\n".join(log.read_text() for log in logs)
    assert "unreachable" in text and "reachable again" in text  # the outage hit it mid-study
    assert PASSWORD not in text


def test_an_outage_longer_than_the_window_is_one_line_then_the_rerun_finishes(sweep_setup, postgres_cluster):
    url = postgres_cluster.url
    tmp_path, overrides = outage_overrides(sweep_setup, url, "gone")
    console = tmp_path / "console.txt"
    driver = start_sweep([*overrides, "study.store_retry_seconds=0"], tmp_path, console)
    try:
        stop_mid_study(postgres_cluster, f"{url}/optuna", "gone", 0)
        code = driver.wait(timeout=300)
    finally:
        postgres_cluster.start()

    output = console.read_text()
    assert code == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    host = url.rsplit("@", 1)[1]
    # The store, masked, and what really happened; not Optuna's guess ("invalid data").
    assert last.startswith("study.sweep: error: study gone:") and "Run the command again to resume" in last
    assert f"study.storage postgresql://study:***@{host}/optuna unreachable: " in last, last
    assert any(
        cause in last for cause in ("Connection refused", "terminating connection", "shutting down")
    ), last
    assert "invalid data" not in last and PASSWORD not in output

    rerun = start_sweep(overrides, tmp_path, tmp_path / "rerun.txt")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.txt").read_text()[-3000:]
    check_invariants(url, "gone", tmp_path)
