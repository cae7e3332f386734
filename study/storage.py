"""Optuna storage for a study, and what happens to trials whose worker is gone.

`study.storage` is an Optuna storage URL (SQLite, PostgreSQL, MySQL: an RDB storage with
heartbeats) or a journal file path (for shared file systems; no heartbeat).

A trial is safe from the moment it exists. A RUNNING trial with no live owner is failed and
retried with the same parameters and user attributes (the enqueued baseline stays the
baseline) by whichever process notices first: a driver starting or polling, or a worker
between trials. "No live owner" is any of:
- its heartbeat went stale (Optuna's own check, RDB storages);
- its worker (`host:pid`, recorded right after the trial is asked for) was on this machine
  and that process is gone;
- it has no worker recorded and started more than a grace period ago: its process died
  between `study.ask()` and the first thing the objective does.
The storage decides atomically which process fails a trial, so a trial is retried once.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from study.budget import TrialCounts
from study.budget import count_trials as _count
from study.config import ConfigError
from study.names import (
    ATTEMPT_ATTRS,
    FAIL_REASON_ATTR,
    MLFLOW_RUN_ATTR,
    NOT_NEEDED_ATTR,
    PARENT_RUN_ATTR,
    RETRY_OF_ATTR,
    TRIAL_NUMBER_TAG,
    WORKER_ATTR,
)
from study.tracking import mask_secrets
from study.trial_run import end_abandoned_run

# Heartbeats, retries and TPE's `group` are marked experimental by Optuna; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

log = logging.getLogger(__name__)

SQLITE_LOCK_TIMEOUT_SECONDS = 60  # several workers write to one SQLite file
POSTGRES_CONNECT_TIMEOUT_SECONDS = 15
SCHEMA_RACE_DELAYS = (0.5, 1.0, 2.0)  # seconds between looks at a schema being created
SQLITE_HEADER = b"SQLite format 3\x00"
# An empty file this young is being made by another driver that starts the same study.
FRESH_FILE_SECONDS = 10
__all__ = [
    "FAIL_REASON_ATTR",
    "MLFLOW_RUN_ATTR",
    "NOT_NEEDED_ATTR",
    "RETRY_OF_ATTR",
    "WORKER_ATTR",
    "TrialCounts",
]


def make_storage(study_cfg: DictConfig, tracking_uri: str) -> optuna.storages.BaseStorage:
    url = study_cfg.storage
    retry = RetryWithSameParams(tracking_uri, study_cfg.max_retry)
    if "://" not in url:
        check_existing_file(Path(url), "an Optuna journal file", _journal_header_ok)
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(url))
        except Exception as error:
            raise ConfigError(describe_storage_error(error, url)) from None
    engine_kwargs = {}
    if url.startswith("sqlite:"):
        database = url.removeprefix("sqlite:///")
        if database and database != ":memory:":
            check_existing_file(Path(database), "an Optuna SQLite database", _sqlite_header_ok)
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
    elif url.startswith("postgresql"):
        # A host that drops packets answers in seconds, not after the system's TCP time-out.
        engine_kwargs = {"connect_args": {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}}
    try:
        return rdb_storage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=study_cfg.heartbeat_interval,
            grace_period=grace_period(study_cfg),
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as error:  # unreachable server, truncated file, wrong password, ...
        raise ConfigError(describe_storage_error(error, url)) from None


def rdb_storage(url: str, **kwargs) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage. Drivers on several machines starting on a new database all create
    Optuna's tables; PostgreSQL lets one CREATE TABLE win and fails the others: look again."""
    for delay in SCHEMA_RACE_DELAYS:
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.IntegrityError:
            time.sleep(delay)
    return optuna.storages.RDBStorage(url, **kwargs)


def grace_period(study_cfg: DictConfig) -> float:
    """Seconds after which a silent trial has no live owner."""
    return 2 * study_cfg.heartbeat_interval


def check_existing_file(path: Path, kind: str, header_ok) -> None:
    """An existing study file must be what it claims: never silently replaced by a new study."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"study.storage: {path} is a folder; expected {kind}")
    size = path.stat().st_size
    if size == 0 and time.time() - path.stat().st_mtime > FRESH_FILE_SECONDS:
        raise ConfigError(
            f"study.storage: {path} is empty (0 bytes), not {kind}; it may be damaged: "
            "restore it, or move it away to start a new study"
        )
    with path.open("rb") as file:
        head = file.read(len(SQLITE_HEADER))
    if size and not header_ok(head):
        raise ConfigError(f"study.storage: {path} is not {kind} (damaged or another kind of file)")


def _sqlite_header_ok(head: bytes) -> bool:
    return head == SQLITE_HEADER


def _journal_header_ok(head: bytes) -> bool:
    return head.startswith(b"{")  # Optuna's journal: one JSON object per line


def describe_storage_error(error: Exception, url: str) -> str:
    """One line for a storage that cannot be opened (unreachable, refused, truncated, garbage)."""
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return mask_secrets(f"study.storage: {url}: cannot be opened as an Optuna study store ({first.strip()})")


class RetryWithSameParams:
    """Optuna's retry of a failed trial, less the attributes of the failed attempt.

    RetryHeartbeatStaleTrialCallback copies the user attributes: the new trial would otherwise
    start with the dead worker's pid and MLflow run, and look dead itself. It also ends the
    dead attempt's MLflow run (KILLED, state FAIL).
    """

    def __init__(self, tracking_uri: str, max_retry: int):
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attempt = copy.deepcopy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        self.retry(study, attempt)  # first: an unreachable tracking server must not cost the retry
        end_runs_of_dead_trial(self.tracking_uri, study, trial)


def end_runs_of_dead_trial(tracking_uri: str, study: optuna.Study, trial: FrozenTrial) -> None:
    """End the MLflow run of a trial whose worker is gone: the one it recorded, and any run
    started for it before the worker could record it (found by its tags)."""
    reason = "worker gone (killed, crashed or stopped); the trial is failed and retried"
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        run_ids = {trial.user_attrs.get(MLFLOW_RUN_ATTR)} - {None}
        run_ids |= set(running_runs_of_trial(client, study, trial.number))
        for run_id in run_ids:
            end_abandoned_run(client, run_id, TrialState.FAIL, reason)
    except Exception as error:  # the retry matters more than the run's status
        log.warning("could not end the MLflow run of dead trial %d: %s", trial.number, error)


def running_runs_of_trial(client: MlflowClient, study: optuna.Study, number: int) -> list[str]:
    parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_id:
        return []
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{TRIAL_NUMBER_TAG}` = '{number}' "
            "and attributes.status = 'RUNNING'"
        ),
    )
    return [run.info.run_id for run in runs]


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """RDB storages made here beat; the journal file cannot."""
    return isinstance(storage, optuna.storages.RDBStorage)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def has_no_live_owner(trial: FrozenTrial, grace_seconds: float, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is gone, as far as this machine can tell (see the module
    docstring); a stale heartbeat is Optuna's own check."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = trial.user_attrs.get(WORKER_ATTR)
    if owner is None:
        now = time.time() if now is None else now
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace_seconds
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def fail_ownerless_trials(
    study: optuna.Study,
    study_cfg: DictConfig,
    tracking_uri: str,
    trials: list[FrozenTrial] | None = None,
) -> int:
    """Fail and retry every RUNNING trial with no live owner; returns how many this process
    failed (another process may win the race for some)."""
    if has_heartbeat(study._storage):
        optuna.storages.fail_stale_trials(study)  # stale heartbeats: Optuna's check and our retry
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trials is None else trials
    grace = grace_period(study_cfg)
    failed = 0
    for trial in trials:
        if has_no_live_owner(trial, grace) and fail_and_retry(
            study, trial, "its worker is gone", study_cfg, tracking_uri
        ):
            log.warning("trial %d: its worker is gone; failed and retried", trial.number)
            failed += 1
    return failed


def fail_and_retry(
    study: optuna.Study, trial: FrozenTrial, reason: str, study_cfg: DictConfig, tracking_uri: str
) -> bool:
    """Fail a RUNNING trial and queue its retry; False if another process finished it first."""
    if not fail_trial(study, trial, reason):
        return False
    retry = RetryWithSameParams(tracking_uri, study_cfg.max_retry)
    retry(study, study._storage.get_trial(trial._trial_id))
    return True


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with a reason; False if another process finished it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def count_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> TrialCounts:
    """Trials by state; pass `trials` when they were just fetched, to save a query."""
    return _count(study.get_trials(deepcopy=False) if trials is None else trials)


def trial_score(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy: its value, or for a pruned trial its best epoch."""
    if trial.value is not None:
        return trial.value
    return max(trial.intermediate_values.values(), default=None)
