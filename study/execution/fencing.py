"""A worker writes for a trial only while the trial is still its own.

A worker that was silent (stopped with SIGSTOP, swapping, cut off from the database) for
longer than the heartbeat's grace period has had its trial failed and retried by another
process (`recovery`). When it wakes, the trial is FAIL and its run was ended KILLED: anything
it wrote now would land in a run that ended, or in the run its retry is training (a promotion
of scheduler=asha reuses its configuration's run). So before each write that matters (metrics,
checkpoints, tags, the run's end, Optuna's report and tell) the worker looks at the trial in
the study store; once the trial is not RUNNING or not its own, `TrialLost` stops it there,
nothing more is written for it, and the worker goes on to its next trial.

The look and the write are two steps. A process stopped while it looks would act on what it
saw before it stopped: a look that took longer than `fresh_seconds` (less than the heartbeat's
grace period, 2 x study.heartbeat_interval, the shortest silence that loses a trial) is taken
again. Metric batches written in the background look again in the writer thread, right
before they are sent, and so do MLflow's system metrics (`tracking.lineage.system_metrics`).
What is left is a stop in the few lines between a look and its write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from study.core.names import WORKER_ATTR
from study.tracking.runs import RunTracker

log = logging.getLogger("study.worker")


class TrialLost(BaseException):
    """This worker's trial was failed by another process while the worker was silent.

    A BaseException on purpose, like an interrupt: Optuna then neither fails nor tells the
    trial (it is not this worker's to tell), and the worker loop goes on to the next trial.
    """


class TrialFence:
    """Is the trial still RUNNING and owned by `owner`? `check()` raises TrialLost if not."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        trial_id: int,
        number: int,
        owner: str,
        fresh_seconds: float,
    ):
        self.storage = storage
        self.trial_id = trial_id
        self.number = number
        self.owner = owner
        self.fresh_seconds = fresh_seconds
        self.lost: str | None = None

    @classmethod
    def of(cls, trial: optuna.Trial, owner: str, fresh_seconds: float) -> TrialFence:
        return cls(trial.study._storage, trial._trial_id, trial.number, owner, fresh_seconds)

    def check(self) -> None:
        while self.lost is None:
            started = time.monotonic()
            self.lost = self._why_lost()
            if time.monotonic() - started < self.fresh_seconds:
                break  # else this process was stopped while it looked: look again
        if self.lost is not None:
            raise TrialLost(self.lost)

    def _why_lost(self) -> str | None:
        # An unfinished trial is read from the database itself, not from Optuna's cache.
        trial = self.storage.get_trial(self.trial_id)
        if trial.state != TrialState.RUNNING:
            return (
                f"trial {trial.number} is {trial.state.name}: another process failed it while "
                "this worker was silent, and retries it"
            )
        holder = trial.user_attrs.get(WORKER_ATTR)
        if holder is not None and holder != self.owner:
            return f"trial {trial.number} is now run by {holder}"
        return None


class FencedTracker(RunTracker):
    """A RunTracker whose writes first check the fence; once the trial is lost, metrics still
    queued are dropped instead of being written into a run that another process ended."""

    def __init__(self, tracker: RunTracker, fence: TrialFence):
        super().__init__(tracker.client, tracker.run_id)
        self.fence = fence

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._check()
        super().log_params(params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._check()
        super().set_tags(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self._check()
        super().log_metrics(metrics, step)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        self._check()
        super().log_artifact(local_path, artifact_path)

    def end(self, status: str, error: BaseException | str | None = None) -> None:
        self._check()
        super().end(status, error)

    def may_write(self) -> bool:
        try:
            self.fence.check()
        except TrialLost:
            return False  # the main thread raises at its next write
        return True

    def _write_metrics(self, metrics) -> None:
        if self.may_write():  # else dropped
            super()._write_metrics(metrics)

    def _check(self) -> None:
        try:
            self.fence.check()
        except TrialLost:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Drop the metric batches not yet written; the run is left as the recovery left it."""
        pending: list[Future] = self._pending
        self._pending = []
        for operation in pending:
            operation.cancel()
        if self._writer is not None:
            self._writer.shutdown(wait=False, cancel_futures=True)
            self._writer = None
