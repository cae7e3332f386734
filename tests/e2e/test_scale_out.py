"""Scale-out against real servers on 127.0.0.1: Optuna on PostgreSQL, a real `mlflow server`
backed by PostgreSQL, independent sweep processes cooperating, a worker SIGKILLed, the tracking
server down for a while, and the journal-file storage. Marked slow: CI runs them."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from study.core.names import WORKER_ATTR
from tests.e2e.conftest import PASSWORD
from tests.helpers import TrackingServer

pytestmark = pytest.mark.slow

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    server = TrackingServer(f"{postgres}/mlflow", tmp_path_factory.mktemp("artifacts"))
    server.start()
    yield server
    server.stop()


def sweep(overrides: list[str], cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def runs_of(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def server_overrides(sweep_setup, postgres, tracking_server, name: str) -> tuple[Path, list[str]]:
    tmp_path, overrides = sweep_setup
    return tmp_path, [
        *overrides,
        f"study.name={name}",
        f"study.storage={postgres}/optuna",
        f"mlflow.tracking_uri={tracking_server.url}",
        f"mlflow.experiment_name={name}",
        "pruner=none",
        "trainer.epochs=1",
    ]


def test_independent_sweeps_cooperate_on_one_study(sweep_setup, postgres, tracking_server):
    tmp_path, overrides = server_overrides(sweep_setup, postgres, tracking_server, "together")
    # 2 drivers x 2 workers, about 2 trials each: enough for both drivers to share the study and
    # finish together (where two of them once registered the winner twice).
    overrides += ["study.n_trials=8", "study.n_workers=2"]
    machines = [sweep(overrides, tmp_path) for _ in range(2)]
    outputs = [finish(machine) for machine in machines]

    study = optuna.load_study(study_name="together", storage=f"{postgres}/optuna")
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) == len(set(numbers))
    assert sum(trial.state in DONE for trial in study.trials) == 8
    client = MlflowClient(tracking_uri=tracking_server.url)
    runs = runs_of(client, "together")
    parents = [run for run in runs if run.data.tags.get("study.role") == "parent"]
    assert len(parents) == 1
    children = {run.info.run_id: run for run in runs if run not in parents}
    for trial in study.trials:
        if "mlflow_run_id" in trial.user_attrs:
            child = children[trial.user_attrs["mlflow_run_id"]]
            assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert not [run for run in runs if run.info.status in ("RUNNING", "SCHEDULED")]
    # Both drivers saw the study done and evaluated its winner; the registry holds it once and
    # both name that version (CI saw two versions and a driver failing on the winner's tag).
    versions = client.search_model_versions("name = 'together'")
    assert [str(version.version) for version in versions] == ["1"]
    assert str(client.get_model_version_by_alias("together", "champion").version) == "1"
    assert parents[0].data.tags["best_trial_model_uri"] == "models:/together/1"
    assert all("models:/together@champion" in output for output in outputs)

    # Credentials never reach MLflow or the console.
    assert (
        parents[0].data.params["study.storage"] == f"postgresql://study:***@{postgres.split('@')[1]}/optuna"
    )
    for run in runs:
        assert PASSWORD not in str(run.data.params) + str(run.data.tags)
    downloads = tmp_path / "downloads"
    sweep_config = client.download_artifacts(parents[0].info.run_id, "sweep_config.yaml", str(downloads))
    assert PASSWORD not in Path(sweep_config).read_text()
    assert "study:***@" in Path(sweep_config).read_text()
    assert all(PASSWORD not in output for output in outputs)


def worker_pids(driver_pid: int) -> list[int]:
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat).with_name("cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == driver_pid and b"study.worker" in cmdline:
            pids.append(int(Path(stat).parent.name))
    return pids


def test_sigkilled_worker_is_replaced_and_its_trial_retried(sweep_setup, postgres, tracking_server):
    tmp_path, overrides = server_overrides(sweep_setup, postgres, tracking_server, "chaos")
    overrides += ["study.n_trials=8", "study.n_workers=2", "trainer.epochs=6"]
    driver = sweep(overrides, tmp_path)
    storage = f"{postgres}/optuna"

    def running_trial_with_run():
        try:
            trials = optuna.load_study(study_name="chaos", storage=storage).trials
        except KeyError:
            return None
        return next(
            (t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs), None
        )

    deadline = time.time() + 180
    while (trial := running_trial_with_run()) is None or len(worker_pids(driver.pid)) < 2:
        assert time.time() < deadline, "no trial started"
        time.sleep(0.5)
    # The worker that runs this trial (the other may still be starting, or between trials).
    worker_pid = int(trial.user_attrs[WORKER_ATTR].rsplit(":", 1)[1])
    assert worker_pid in worker_pids(driver.pid)
    os.kill(worker_pid, signal.SIGKILL)
    output = finish(driver)
    assert "starting a replacement" in output

    study = optuna.load_study(study_name="chaos", storage=storage)
    assert sum(trial.state in DONE for trial in study.trials) == 8
    failed = [trial for trial in study.trials if trial.state == TrialState.FAIL]
    assert failed, "the killed worker's trial is failed"
    retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [trial for trial in study.trials if retry_of(trial) is not None]
    assert {retry_of(trial) for trial in retried} <= {trial.number for trial in failed}
    assert retried and all(trial.params == study.trials[retry_of(trial)].params for trial in retried)
    client = MlflowClient(tracking_uri=tracking_server.url)
    killed_run = client.get_run(study.trials[retry_of(retried[0])].user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED"
    assert "worker gone" in killed_run.data.tags["error"]
    assert killed_run.data.tags["optuna.trial.state"] == "FAIL"
    assert not [run for run in runs_of(client, "chaos") if run.info.status in ("RUNNING", "SCHEDULED")]


def test_tracking_server_outage_loses_nothing(sweep_setup, postgres, tracking_server):
    tmp_path, overrides = server_overrides(sweep_setup, postgres, tracking_server, "outage")
    overrides += ["study.n_trials=6", "trainer.epochs=3"]
    storage = f"{postgres}/optuna"
    driver = sweep(overrides, tmp_path)

    def complete_trials() -> int:
        try:
            trials = optuna.load_study(study_name="outage", storage=storage).trials
        except KeyError:
            return 0
        return sum(trial.state == TrialState.COMPLETE for trial in trials)

    deadline = time.time() + 180
    while complete_trials() < 1:
        assert time.time() < deadline, "no trial finished"
        time.sleep(0.5)
    tracking_server.stop()
    time.sleep(5)
    tracking_server.start()  # same port, same database
    finish(driver)

    study = optuna.load_study(study_name="outage", storage=storage)
    assert sum(trial.state in DONE for trial in study.trials) == 6
    client = MlflowClient(tracking_uri=tracking_server.url)
    runs = runs_of(client, "outage")
    assert not [run for run in runs if run.info.status in ("RUNNING", "SCHEDULED")]
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:  # acknowledged: every epoch is in MLflow
            history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "val_accuracy")
            assert sorted(metric.step for metric in history) == [1, 2, 3]

    more = [*overrides[:-2], "study.n_trials=7", "trainer.epochs=3"]
    finish(sweep(more, tmp_path))
    study = optuna.load_study(study_name="outage", storage=storage)
    assert sum(trial.state in DONE for trial in study.trials) == 7


def test_journal_file_storage_with_two_workers(sweep_setup):
    tmp_path, overrides = sweep_setup
    journal = tmp_path / "runs" / "optuna-journal.log"
    overrides += [f"study.storage={journal}", "study.n_workers=2", "study.n_trials=6", "pruner=none"]
    finish(sweep(overrides, tmp_path))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="default", storage=storage)
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) == len(set(numbers))
    assert sum(trial.state in DONE for trial in study.trials) == 6
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs'}/mlflow.db")
    assert not [run for run in runs_of(client, "study") if run.info.status == "RUNNING"]


def test_trial_killed_the_moment_it_starts_is_retried_on_postgresql(sweep_setup, postgres):
    """The window between study.ask() and the worker recording itself, on PostgreSQL: the
    driver replaces the killed worker and the study still ends with exactly n_trials."""
    import psycopg

    from tests.helpers import assert_retried, worker_pids

    tmp_path, overrides = sweep_setup
    database = f"window_{os.getpid()}"
    with psycopg.connect(f"{postgres}/optuna", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    storage = f"{postgres}/{database}"
    overrides += [f"study.storage={storage}", "study.n_trials=3", "pruner=none", "trainer.epochs=1"]
    driver = sweep(overrides, tmp_path)
    number = None
    with psycopg.connect(f"{postgres}/{database}") as connection:
        deadline = time.time() + 180
        while number is None and time.time() < deadline:
            try:
                row = connection.execute(
                    "SELECT number FROM trials WHERE state = 'RUNNING' LIMIT 1"
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                connection.rollback()
                row = None
            connection.rollback()  # a fresh snapshot each poll
            number = row[0] if row else None
        for pid in worker_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)
    finish(driver)
    study = optuna.load_study(study_name="default", storage=storage)
    assert sum(t.state in DONE for t in study.trials) == 3
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    assert_retried(study, number)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs'}/mlflow.db")
    assert not [run for run in runs_of(client, "study") if run.info.status == "RUNNING"]
