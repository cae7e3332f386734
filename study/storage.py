"""Optuna storage for a study, and the counts that decide when a study is done.

`study.storage` is an Optuna storage URL (SQLite, PostgreSQL, MySQL: an RDB storage with
heartbeats, so the trial of a dead worker is failed, its MLflow run ended and the trial
retried) or a journal file path (for shared file systems; no heartbeat).
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from study.tracking import end_run_if_running

# Heartbeats, retries and TPE's `group` are marked experimental by Optuna; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SQLITE_LOCK_TIMEOUT_SECONDS = 60  # several workers write to one SQLite file
MLFLOW_RUN_ATTR = "mlflow_run_id"


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


class StaleTrialCallback:
    """A worker died mid-trial: end the trial's MLflow run, then let Optuna retry the trial."""

    def __init__(self, tracking_uri: str, max_retry: int):
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        if run_id:
            end_run_if_running(
                MlflowClient(tracking_uri=self.tracking_uri),
                run_id,
                "worker stopped sending heartbeats (killed or crashed); the trial is retried",
            )
        self.retry(study, trial)


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


def count_trials(study: optuna.Study) -> TrialCounts:
    states = collections.Counter(trial.state for trial in study.get_trials(deepcopy=False))
    return TrialCounts(
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        failed=states[TrialState.FAIL],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
    )


def max_failed_trials(settings: DictConfig) -> int:
    return settings.study.max_failed_trials or settings.study.n_trials
