"""Workers that are alive but silent: frozen with SIGSTOP (a paused job, a swapping node), then
woken with SIGCONT long after their trial was given up on.

Real processes, real signals, real stores (Optuna on SQLite or PostgreSQL, a real `mlflow
server`): the frozen worker's trial is failed within 2 x heartbeat_interval plus a poll, and
retried by the other worker; the woken worker writes nothing more for it and goes on to its
next trial without a restart; then the invariants of a study hold. Marked slow: CI runs them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from study.core.names import (
    ERROR_TAG,
    MLFLOW_RUN_ATTR,
    RETRY_FAILED_TRIAL_ATTR,
    STATE_TAG,
    STUDY_ROLE_TAG,
    WORKER_ATTR,
)
from study.search import asha
from tests.e2e.cluster_studies import start_sweep, trials_of
from tests.helpers import TrackingServer, worker_pids

pytestmark = pytest.mark.slow

HEARTBEAT_SECONDS = 2
DRIVER_POLL_SECONDS = 1.0
# On a busy 2-core CI machine the store's answers and the signals themselves take time.
SLACK_SECONDS = 4.0
N_TRIALS = 4
EPOCHS = 8
BATCH_SIZE = 2
ASHA = ["scheduler=asha", "scheduler.reduction_factor=2", "study.n_trials=3"]  # rungs 2, 4, 8
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path):
    """(Optuna storage URL, tracking server) on one kind of database."""
    if request.param == "sqlite":
        storage, backend = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    else:
        postgres = request.getfixturevalue("postgres")
        storage, backend = f"{postgres}/optuna", f"{postgres}/mlflow"
    server = TrackingServer(backend, tmp_path / "artifacts")
    server.start()
    yield storage, server
    server.stop()


def overrides_for(sweep_setup, stores, name: str, scheduler: list[str]) -> tuple[Path, list[str]]:
    tmp_path, overrides = sweep_setup
    storage, server = stores
    return tmp_path, [
        *overrides,
        f"study.name={name}",
        f"study.storage={storage}",
        f"mlflow.tracking_uri={server.url}",
        f"mlflow.experiment_name={name}",
        "study.n_workers=2",
        f"study.heartbeat_interval={HEARTBEAT_SECONDS}",
        "pruner=none",
        f"trainer.epochs={EPOCHS}",
        # 150 steps an epoch, about half a second: the moments these tests catch (a trial's
        # last epochs, a promotion's) last long enough for a poll of the store to see them.
        f"trainer.batch_size={BATCH_SIZE}",
        *(scheduler or [f"study.n_trials={N_TRIALS}"]),
    ]


def wait_for_workers(tmp_path: Path, name: str, driver: subprocess.Popen) -> None:
    """Workers start once the driver made the study: the test's reads must not race the
    driver creating the study's tables (an Optuna storage creates them when they are missing)."""
    logs = tmp_path / "runs" / "studies" / name / "logs"
    poll(lambda: list(logs.glob("worker_*.log")), driver=driver)


def state_of(storage: str, name: str, number: int) -> TrialState | None:
    trials = trials_of(storage, name)
    return trials[number].state if number < len(trials) else None


class SweepEnded(AssertionError):
    """The sweep ended before the moment a test waited for."""


def poll(condition, timeout: float = 240.0, interval: float = 0.2, driver: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver is not None and driver.poll() is not None:
            raise SweepEnded(f"the sweep ended first: {driver.stdout.read()[-3000:]}")
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError("timed out")


def training_trial(storage: str, name: str, last: bool) -> FrozenTrial | None:
    """A RUNNING trial that is training (its run recorded, an epoch reported); with `last`,
    the study's last one, near its end."""
    trials = trials_of(storage, name)
    for trial in trials:
        training = trial.state == TrialState.RUNNING and MLFLOW_RUN_ATTR in trial.user_attrs
        if not training or not trial.intermediate_values:
            continue
        if not last:
            return trial
        others_done = sum(t.state in DONE for t in trials) >= N_TRIALS - 1
        if others_done and max(trial.intermediate_values) >= EPOCHS - 2:
            return trial
    return None


def stop_worker_of(trial: FrozenTrial) -> int | None:
    """SIGSTOP the worker running `trial`: its pid, or None when it has exited since the look
    (the trial was the study's last, and it ended)."""
    pid = int(trial.user_attrs[WORKER_ATTR].rpartition(":")[2])
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    return pid


def let_the_sweep_end(pid: int | None, driver: subprocess.Popen) -> None:
    """The trial ended between the look and the signal: nothing stays frozen; the sweep ends."""
    if pid is not None:
        os.kill(pid, signal.SIGCONT)
    driver.communicate(timeout=600)


def freeze_wake_and_finish(tmp_path, overrides, storage, name, last=False):
    """SIGSTOP the worker of a training trial, wait for its failure and its retry, SIGCONT.
    Returns (the frozen trial, seconds until it was failed, the sweep's output), or None when
    the trial finished between the look and the signal, or the sweep before any look found it
    (then nothing was frozen)."""
    driver = start_sweep(overrides, tmp_path)
    store = None
    try:
        wait_for_workers(tmp_path, name, driver)
        store = optuna.storages.RDBStorage(storage)  # one pool: a new one per look connects anew
        try:
            frozen = poll(lambda: training_trial(store, name, last), interval=0.05, driver=driver)
        except SweepEnded:
            return None
        pid = stop_worker_of(frozen)
        stopped = time.time()
        if pid is None or state_of(store, name, frozen.number) != TrialState.RUNNING:
            let_the_sweep_end(pid, driver)
            return None
        poll(lambda: state_of(store, name, frozen.number) == TrialState.FAIL, interval=0.1)
        failed_after = time.time() - stopped
        poll(lambda: retry_of(trials_of(store, name), frozen.number), interval=0.2)
        time.sleep(HEARTBEAT_SECONDS)  # the retry trains while the frozen worker sleeps on
        os.kill(pid, signal.SIGCONT)
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        if store is not None:
            store.engine.dispose()
    assert driver.returncode == 0, output[-3000:]
    return frozen, failed_after, output


def retry_of(trials: list[FrozenTrial], number: int) -> FrozenTrial | None:
    return next((t for t in trials if t.system_attrs.get(RETRY_FAILED_TRIAL_ATTR) == number), None)


def check_invariants(storage: str, name: str, server: TrackingServer, n_done: int) -> list[FrozenTrial]:
    """Exactly n done, nothing RUNNING, one parent run, run states match trial states, and no
    metric logged to a run after it ended."""
    trials = trials_of(storage, name)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    firsts = asha.first_segments(trials) if any(asha.RUNG_ATTR in t.user_attrs for t in trials) else trials
    assert sum(t.state in DONE for t in firsts) == n_done
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len([run for run in runs if run.data.tags.get(STUDY_ROLE_TAG) == "parent"]) == 1
    assert not [run.info.run_id for run in runs if run.info.status in ("RUNNING", "SCHEDULED")]
    latest: dict[str, FrozenTrial] = {}  # a run's last trial (a promotion reuses its config's run)
    for trial in trials:
        if MLFLOW_RUN_ATTR in trial.user_attrs:
            latest[trial.user_attrs[MLFLOW_RUN_ATTR]] = trial
    for run in runs:
        trial = latest.get(run.info.run_id)
        if trial is not None:
            assert run.data.tags[STATE_TAG] == trial.state.name, (trial.number, run.data.tags)
        for key in run.data.metrics:
            curve = client.get_metric_history(run.info.run_id, key)
            late = [metric for metric in curve if metric.timestamp > run.info.end_time]
            assert not late, f"{key} logged to run {run.info.run_id} after it ended"
    return trials


def check_woken_worker_went_on(tmp_path: Path, output: str, frozen: FrozenTrial) -> None:
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "studies").rglob("worker_*.log"))
    assert f"trial {frozen.number} is FAIL" in logs and "goes on to the next trial" in logs
    assert "Cannot tell" not in logs and "Traceback" not in logs
    assert "starting a replacement" not in output and "exited with" not in output, output[-3000:]
    assert not worker_pids(tmp_path)


@pytest.mark.parametrize("last", [False, True], ids=["mid-trial", "end-of-last-trial"])
def test_a_frozen_worker_loses_its_trial_and_writes_nothing_when_woken(sweep_setup, stores, last):
    storage, server = stores
    for attempt in range(3):  # a trial may end in the instant between the look and SIGSTOP
        name = f"frozen-{'last' if last else 'mid'}-{attempt}"
        tmp_path, overrides = overrides_for(sweep_setup, stores, name, [])
        frozen_and_woken = freeze_wake_and_finish(tmp_path, overrides, storage, name, last)
        if frozen_and_woken is not None:
            break
    frozen, failed_after, output = frozen_and_woken

    print(f"failed {failed_after:.1f} s after SIGSTOP")
    assert failed_after < 2 * HEARTBEAT_SECONDS + DRIVER_POLL_SECONDS + SLACK_SECONDS, failed_after
    trials = check_invariants(storage, name, server, N_TRIALS)
    retry = retry_of(trials, frozen.number)
    assert trials[frozen.number].state == TrialState.FAIL
    assert retry.state in DONE and retry.params == frozen.params
    # The frozen attempt's run stays as the recovery ended it: KILLED, FAIL, "worker gone".
    run = MlflowClient(tracking_uri=server.url).get_run(frozen.user_attrs[MLFLOW_RUN_ATTR])
    assert run.info.status == "KILLED"
    assert run.data.tags[STATE_TAG] == "FAIL" and "worker gone" in run.data.tags[ERROR_TAG]
    check_woken_worker_went_on(tmp_path, output, frozen)


def freeze_a_promotion(tmp_path, overrides, storage, name):
    """SIGSTOP the worker of a promotion while it trains, SIGCONT once its retry trains in the
    same run. Returns (the frozen trial, the sweep's output), or None when the promotion ended
    between the look and the signal, or the sweep before any look found one."""
    driver = start_sweep(overrides, tmp_path)
    store = None

    def frozen_promotion():
        trial = training_trial(store, name, last=False)
        return trial if trial is not None and asha.is_promotion(trial) else None

    try:
        wait_for_workers(tmp_path, name, driver)
        store = optuna.storages.RDBStorage(storage)  # one pool: a new one per look connects anew
        try:
            frozen = poll(frozen_promotion, interval=0.05, driver=driver)
        except SweepEnded:
            return None
        pid = stop_worker_of(frozen)
        if pid is None or state_of(store, name, frozen.number) != TrialState.RUNNING:
            let_the_sweep_end(pid, driver)
            return None
        poll(lambda: state_of(store, name, frozen.number) == TrialState.FAIL, interval=0.1)
        retry = poll(lambda: retry_of(trials_of(store, name), frozen.number), interval=0.2)
        poll(lambda: state_of(store, name, retry.number) not in (None, TrialState.WAITING), interval=0.2)
        os.kill(pid, signal.SIGCONT)  # wakes while the retry trains in the same run
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        if store is not None:
            store.engine.dispose()
    assert driver.returncode == 0, output[-3000:]
    return frozen, output


def test_a_frozen_asha_worker_never_writes_into_the_run_its_retry_trains(sweep_setup, stores):
    """Under scheduler=asha a promotion trains on in its configuration's run: the retry of a
    frozen promotion and the woken worker would write into one run."""
    storage, server = stores
    for attempt in range(3):  # a promotion may end in the instant between the look and SIGSTOP
        name = f"frozen-asha-{attempt}"
        tmp_path, overrides = overrides_for(sweep_setup, stores, name, ASHA)
        frozen_and_woken = freeze_a_promotion(tmp_path, overrides, storage, name)
        if frozen_and_woken is not None:
            break
    frozen, output = frozen_and_woken

    trials = check_invariants(storage, name, server, 3)
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(frozen.user_attrs[MLFLOW_RUN_ATTR])
    assert run.info.status == "FINISHED" and ERROR_TAG not in run.data.tags  # no stale error tag
    by_step: dict[int, set[float]] = {}
    for metric in client.get_metric_history(run.info.run_id, "val_accuracy"):
        by_step.setdefault(metric.step, set()).add(metric.value)
    assert all(len(values) == 1 for values in by_step.values()), by_step  # one curve, not two
    assert retry_of(trials, frozen.number).state == TrialState.COMPLETE
    check_woken_worker_went_on(tmp_path, output, frozen)


LOCK_HOLDER = """
import os, signal, sys
import sqlalchemy
from omegaconf import OmegaConf
from study.execution.storage import postgres_connect_args
study_cfg = OmegaConf.create({"heartbeat_interval": int(sys.argv[2])})
engine = sqlalchemy.create_engine(sys.argv[1], connect_args=postgres_connect_args(study_cfg))
connection = engine.connect()
lock = sqlalchemy.text("SELECT * FROM trials WHERE trial_id = :id FOR UPDATE")
connection.execute(lock, {"id": int(sys.argv[3])})
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # frozen inside Optuna's tell, the trial's row locked
"""


def test_a_worker_frozen_inside_a_transaction_does_not_lock_its_trial_for_ever(postgres):
    """Optuna's tell locks the trial's row; a worker stopped before its commit kept the lock,
    and the process failing its stale trial waited on it for ever. The server now ends a session
    idle in a transaction after the grace period (2 x heartbeat)."""
    storage_url = f"{postgres}/optuna"
    study = optuna.create_study(study_name="frozen-lock", storage=storage_url)
    trial_id = study.ask()._trial_id
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, storage_url, str(HEARTBEAT_SECONDS), str(trial_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.time()
        study._storage.set_trial_state_values(trial_id, TrialState.FAIL)  # waits on the lock
        waited = time.time() - started
    finally:
        holder.kill()
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait()
    assert study.trials[0].state == TrialState.FAIL
    assert waited < 2 * HEARTBEAT_SECONDS + SLACK_SECONDS, waited
