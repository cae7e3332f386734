"""Crash safety with real processes and real signals: no study hangs, loops or leaves a trial behind.

Each test kills or interrupts real driver and worker processes at the worst moments (the store
is polled and the signal sent at once), then checks the invariants a user relies on: the
same command ends the study with exactly study.n_trials trials, nothing RUNNING in Optuna or
MLflow, the killed trial retried with its parameters, one parent run, and no worker left.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from study.core.names import BASELINE_ATTR, MLFLOW_RUN_ATTR, STATE_TAG
from study.search.asha import was_needed
from tests.helpers import assert_retried, worker_pids

N_TRIALS = 3
EXPECTED_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": ("FAILED", "KILLED")}


def sweep(overrides, tmp_path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.sweep", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,
    )


def start_sweep(overrides, tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *overrides],
        cwd=tmp_path,
        start_new_session=True,  # its own process group: the test can signal it like a terminal
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_running_trial(database: Path, driver: subprocess.Popen | None = None, timeout: float = 180.0):
    """Poll the study store as fast as it answers; return the first RUNNING trial's number
    (None if the driver ended first: nothing was left to run)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver is not None and driver.poll() is not None:
            return None
        if database.exists():
            try:
                with read_only(database) as connection:
                    row = connection.execute(
                        "SELECT number FROM trials WHERE state = 'RUNNING' LIMIT 1"
                    ).fetchone()
            except sqlite3.OperationalError:  # tables not made yet, or locked for a moment
                row = None
            if row:
                return row[0]
        time.sleep(0.002)
    raise AssertionError("no trial started")


def read_only(database: Path) -> sqlite3.Connection:
    """Never creates the file: an empty study file is refused as damaged."""
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)


def trial_states(database: Path) -> list[str]:
    try:
        with read_only(database) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # not made yet
        return []


def check_invariants(tmp_path: Path, n_trials: int = N_TRIALS) -> optuna.Study:
    """What every interrupted-then-resumed study must look like."""
    runs_dir = tmp_path / "runs"
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{runs_dir}/optuna.db")
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == n_trials
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert len({t.number for t in trials}) == len(trials)
    baseline = [t for t in trials if t.user_attrs.get(BASELINE_ATTR)]
    assert any(t.state == TrialState.COMPLETE for t in baseline), "the enqueued baseline always runs"
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id], max_results=1000)
    assert not [run for run in runs if run.info.status == "RUNNING"]
    parents = [run for run in runs if run.data.tags.get("study.role") == "parent"]
    assert len(parents) == 1
    children = {run.info.run_id: run for run in runs if run.data.tags.get("study.role") != "parent"}
    for trial in trials:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        if run_id is None:
            continue
        run = children[run_id]
        assert run.data.tags[STATE_TAG] == trial.state.name
        assert run.info.status in EXPECTED_RUN_STATUS[trial.state.name]
    for run in children.values():  # a run started for a trial that never recorded it ended too
        assert run.data.tags[STATE_TAG] in ("COMPLETE", "PRUNED", "FAIL")
    board = (runs_dir / "studies" / "default" / "leaderboard.csv").read_text().splitlines()
    # A trial asked while the others already reach n_trials ends at once, "not needed": no row.
    assert len(board) == 1 + len([trial for trial in trials if was_needed(trial)])
    assert not worker_pids(tmp_path), "no worker outlives its driver"
    return study


def assert_quiet_logs(tmp_path: Path) -> None:
    """Expected events (interrupted, not needed, pruned) are one line each, not tracebacks."""
    for log in (tmp_path / "runs" / "studies" / "default" / "logs").glob("worker_*.log"):
        text = log.read_text()
        assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


@pytest.mark.parametrize(
    ("victim", "signum"),
    [
        ("worker", signal.SIGKILL),
        pytest.param("worker", signal.SIGINT, marks=pytest.mark.slow),
        pytest.param("driver", signal.SIGKILL, marks=pytest.mark.slow),
    ],
)
def test_a_trial_killed_the_moment_it_starts_is_retried(sweep_setup, victim, signum):
    """Between study.ask() and the worker recording itself there is no heartbeat and no owner:
    a kill there once left a trial RUNNING forever and every later session hanging."""
    tmp_path, overrides = sweep_setup
    overrides += [f"study.n_trials={N_TRIALS}", "pruner=none", "trainer.epochs=1"]
    driver = start_sweep(overrides, tmp_path)
    try:
        number = first_running_trial(tmp_path / "runs" / "optuna.db")
        if victim == "driver":
            os.kill(driver.pid, signum)
        else:
            for pid in worker_pids(tmp_path):
                os.kill(pid, signum)
        if victim == "driver":
            driver.wait(timeout=120)
            rerun = sweep(overrides, tmp_path)
            assert rerun.returncode == 0, rerun.stderr[-3000:]
        else:  # the driver replaces its worker and finishes in the same session
            driver.wait(timeout=300)
            assert driver.returncode == 0, driver.stderr.read()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    study = check_invariants(tmp_path)
    assert_retried(study, number)
    assert_quiet_logs(tmp_path)


@pytest.mark.slow
def test_random_kills_and_interrupts_never_break_a_study(sweep_setup):
    """Seeded chaos: SIGKILLs and Ctrl-Cs of workers and the driver at random moments, a rerun
    after each, and the invariants at the end."""
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=8", "study.n_workers=2", "pruner=none", "trainer.epochs=3"]
    chance = random.Random(20261122)
    for _ in range(4):
        driver = start_sweep(overrides, tmp_path)
        try:
            if first_running_trial(tmp_path / "runs" / "optuna.db", driver) is None:
                break  # the study finished between two kills
            time.sleep(chance.uniform(0.0, 4.0))
            victim, signum = chance.choice(
                [
                    ("worker", signal.SIGKILL),
                    ("worker", signal.SIGINT),
                    ("driver", signal.SIGKILL),
                    ("group", signal.SIGINT),  # Ctrl-C in a terminal: the whole process group
                ]
            )
            if victim == "driver":
                os.kill(driver.pid, signum)
            elif victim == "group":
                os.killpg(driver.pid, signum)
            else:
                pids = worker_pids(tmp_path)
                if pids:
                    os.kill(chance.choice(pids), signum)
            driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        deadline = time.time() + 60
        while worker_pids(tmp_path) and time.time() < deadline:
            time.sleep(0.5)
        assert not worker_pids(tmp_path), "workers outlived their driver"
    final = sweep(overrides, tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    check_invariants(tmp_path, n_trials=8)


def test_second_ctrl_c_ends_every_worker_and_leaves_nothing_running(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=20", "study.n_workers=2", "pruner=none", "trainer.epochs=50"]
    driver = start_sweep(overrides, tmp_path)
    try:
        first_running_trial(tmp_path / "runs" / "optuna.db")
        time.sleep(1.0)
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: driver and workers get it
        time.sleep(0.3)
        os.kill(driver.pid, signal.SIGINT)  # and again, impatiently
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode != 0
    assert not worker_pids(tmp_path)
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path / 'runs'}/optuna.db")
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert TrialState.RUNNING not in [t.state for t in study.get_trials()]
    for trial in interrupted:  # each interrupted trial waits to run again
        assert_retried(study, trial.number)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs'}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert runs and not [run for run in runs if run.info.status == "RUNNING"]


def test_failures_before_training_count_and_stop_the_session(sweep_setup):
    """A trial that fails before it trains (here: the search space of a resumed study gained
    a choice) must count against study.max_failed_trials: it once looped thousands of times."""
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=2", "pruner=none", "trainer.epochs=1"]
    first = sweep([*overrides, "study.n_trials=1"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    space = tmp_path / "conf" / "search_space" / "tiny.yaml"
    space.write_text(space.read_text().replace("choices: [sgd, adam]", "choices: [sgd, adam, rmsprop]"))
    started = time.time()
    changed = sweep(overrides, tmp_path)
    assert changed.returncode == 2
    (line,) = changed.stderr.strip().splitlines()
    assert line.startswith("study.sweep: error: search_space.optimizer: changed since study default began")
    assert time.time() - started < 60


def test_damaged_study_file_is_refused_and_kept(sweep_setup):
    tmp_path, overrides = sweep_setup
    database = tmp_path / "runs" / "optuna.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"")  # made just now: empty is refused whatever the file's age
    done = sweep(overrides, tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert str(database) in line and "empty" in line
    assert database.read_bytes() == b""
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.slow
def test_full_tracking_disk_stops_the_session_with_one_line_then_resumes(sweep_setup):
    """MLflow's store on a tiny file system that fills up mid-study: the session stops by the
    failure rule with the documented line; with space back, the same command finishes."""
    tmp_path, overrides = sweep_setup
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        overrides += [
            f"mlflow.tracking_uri=sqlite:///{disk}/mlflow.db",
            f"mlflow.artifact_location={disk}/artifacts",
            "study.n_trials=4",
            "study.max_failed_trials=2",
            "pruner=none",
            "trainer.epochs=1",
        ]
        driver = start_sweep(overrides, tmp_path)
        database = tmp_path / "runs" / "optuna.db"
        wait_until = time.time() + 180
        while time.time() < wait_until and "COMPLETE" not in trial_states(database):
            time.sleep(0.5)
        filler = disk / "filler"
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True
        )  # the disk is full
        started = time.time()
        driver.wait(timeout=300)
        stderr = driver.stderr.read()
        assert driver.returncode == 1, stderr[-3000:]
        assert time.time() - started < 240
        last = stderr.strip().splitlines()[-1]
        assert (
            last.startswith("study.sweep: error: study default:")
            and "Run the command again to resume" in last
        )
        assert "Traceback" not in stderr
        assert not worker_pids(tmp_path)
        filler.unlink()
        resumed = sweep(overrides, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        study = optuna.load_study(study_name="default", storage=f"sqlite:///{database}")
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
        client = MlflowClient(tracking_uri=f"sqlite:///{disk}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
        assert not [run for run in runs if run.info.status == "RUNNING"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


SWALLOWING_WORKER = """
import sys, time
from study.execution.signals import WorkerSignals
signals = WorkerSignals(grace_seconds=2)
signals.install()
print("ready", flush=True)


def swallow():  # a library callback that swallows KeyboardInterrupt, as JAX's gc callback did
    while True:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass


while True:
    try:
        swallow()
    except KeyboardInterrupt:
        pass
"""


def test_a_worker_whose_interrupt_is_swallowed_still_exits(tmp_path):
    worker = subprocess.Popen(
        [sys.executable, "-c", SWALLOWING_WORKER], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # inside the swallowing loop, not still returning from print()
        os.kill(worker.pid, signal.SIGTERM)  # what the driver (or its death) sends
        assert worker.wait(timeout=15) == 130
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.mark.slow
def test_two_drivers_started_together_share_runs_dir_and_study(sweep_setup):
    """Two drivers of one study on one SQLite file and one runs_dir, started 0.5 s apart:
    each worker reads its own driver's spec file, nothing crashes or restarts."""
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=6", "study.n_workers=2", "pruner=none", "trainer.epochs=2"]
    command = [sys.executable, "-m", "study.sweep", *overrides]
    first = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(0.5)
    second = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outputs = [driver.communicate(timeout=600)[0] for driver in (first, second)]
    for driver, output in zip((first, second), outputs, strict=True):
        assert driver.returncode == 0, output[-3000:]
        assert "exited with" not in output and "starting a replacement" not in output, output[-3000:]
    check_invariants(tmp_path, n_trials=6)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "studies" / "default" / "logs").glob("*.log"))
    assert "FileNotFoundError" not in logs and "Traceback" not in logs
    assert not list((tmp_path / "runs").rglob("worker_*.json"))
