"""Optuna storage for a study, and the counts that decide when a study is done.

`study.storage` is an Optuna storage URL (SQLite, PostgreSQL, MySQL: an RDB storage with
heartbeats, so the trial of a dead worker is failed, its MLflow run ended and the trial
retried) or a journal file path (for shared file systems; no heartbeat).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from study.config import ConfigError
from study.masking import error_line, mask_secrets
from study.tracking import end_run_if_running

# Heartbeats, retries and TPE's `group` are marked experimental by Optuna; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

log = logging.getLogger(__name__)

SQLITE_LOCK_TIMEOUT_SECONDS = 60  # several workers write to one SQLite file
# Trial user attributes.
MLFLOW_RUN_ATTR = "mlflow_run_id"
FAIL_REASON_ATTR = "fail_reason"  # set for a trial that failed on its own (error, NaN loss)
NOT_NEEDED_ATTR = "not_needed"  # a trial that lost the race for the last places of the study
WORKER_ATTR = "worker"  # host:pid of the worker process that runs the trial
RETRY_OF_ATTR = "retry_of"


def make_storage(study_cfg: DictConfig, tracking_uri: str) -> optuna.storages.BaseStorage:
    url = study_cfg.storage
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    engine_kwargs = {}
    if url.startswith("sqlite:"):
        database = url.removeprefix("sqlite:///")
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=study_cfg.heartbeat_interval,
        grace_period=2 * study_cfg.heartbeat_interval,
        heartbeat_stale_trial_callback=StaleTrialCallback(tracking_uri, study_cfg.max_retry),
    )


def open_study_storage(study_cfg: DictConfig, tracking_uri: str) -> optuna.storages.BaseStorage:
    """`make_storage` for the driver: a storage it cannot open (server down or refusing,
    wrong credentials, a missing database) is one line naming study.storage (ConfigError)."""
    try:
        return make_storage(study_cfg, tracking_uri)
    except Exception as error:
        storage = mask_secrets(study_cfg.storage)
        raise ConfigError(f"study.storage: cannot open {storage}: {error_line(error)}") from error


class StaleTrialCallback:
    """A worker died mid-trial: end the trial's MLflow run, then let Optuna retry the trial."""

    def __init__(self, tracking_uri: str, max_retry: int):
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)  # first: an unreachable tracking server must not cost the retry
        end_dead_workers_run(self.tracking_uri, trial)


def end_dead_workers_run(tracking_uri: str, trial: FrozenTrial) -> None:
    run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
    if not run_id:
        return
    try:
        end_run_if_running(
            MlflowClient(tracking_uri=tracking_uri),
            run_id,
            "worker stopped sending heartbeats (killed or crashed); the trial is retried",
        )
    except Exception as error:  # the retry matters more than the run's status
        log.warning("could not end MLflow run %s of dead trial %d: %s", run_id, trial.number, error)


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """RDB storages made here beat; the journal file cannot."""
    return isinstance(storage, optuna.storages.RDBStorage)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphaned_trials(study: optuna.Study, tracking_uri: str) -> int:
    """For storages without heartbeat (the journal file): fail and retry the RUNNING trials
    whose worker process on this machine is gone. Returns how many."""
    host = socket.gethostname()
    orphaned = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = trial.user_attrs.get(WORKER_ATTR, "").rpartition(":")
        if owner_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        end_dead_workers_run(tracking_uri, trial)
        orphaned += 1
    return orphaned


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        """Trials that count towards study.n_trials."""
        return self.complete + self.pruned


def count_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> TrialCounts:
    """Trials by state; pass `trials` when they were just fetched, to save a query."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    states = collections.Counter(trial.state for trial in trials)
    return TrialCounts(
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        failed=states[TrialState.FAIL],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
    )


def max_failed_trials(settings: DictConfig) -> int:
    limit = settings.study.max_failed_trials
    return settings.study.n_trials if limit is None else limit


def failed_since(study: optuna.Study, start: float) -> int:
    """Trials that failed on their own (not dead workers, not surplus) since `start`."""
    return sum(
        1
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if FAIL_REASON_ATTR in trial.user_attrs
        and trial.datetime_start is not None
        and trial.datetime_start.timestamp() >= start
    )


def trial_score(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy: its value, or for a pruned trial its best epoch."""
    if trial.value is not None:
        return trial.value
    return max(trial.intermediate_values.values(), default=None)
