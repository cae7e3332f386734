"""A trial's MLflow run from start to end, owned by one context manager.

The objective opens the run with `TrialRun.start(...)` and trains inside the block; how the
block ends decides the run's status and its `optuna.trial.state` tag, both written before
the run ends:

| the block ends with        | trial state | run status | shown                                  |
| -------------------------- | ----------- | ---------- | -------------------------------------- |
| a value                    | COMPLETE    | FINISHED   |                                        |
| optuna.TrialPruned         | PRUNED      | FINISHED   | description "pruned after epoch k ..." |
| an interrupt (Ctrl-C, ...) | FAIL        | KILLED     | `error`: interrupted, retried          |
| any other exception        | FAIL        | FAILED     | `error` (one line), error.txt          |
| `fencing.TrialLost`        | (as failed) | (as ended) | nothing: another process took it over  |

A pruned trial is a decision, not a failure: its run finishes, keeps its curves and says why
it stopped. Runs whose worker died get the same treatment from `end_abandoned_run`. Every
write goes through the trial's fence (`fencing`): a worker that wakes after its trial was
failed and retried elsewhere leaves the run as the recovery ended it.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from study.core.names import ERROR_TAG, NOTE_TAG, STATE_TAG
from study.execution.fencing import FencedTracker, TrialFence, TrialLost
from study.tracking.runs import RunTracker

INTERRUPTS = (KeyboardInterrupt, SystemExit)


class TrialRun:
    def __init__(self, tracker: RunTracker, fence: TrialFence):
        self.tracker = FencedTracker(tracker, fence)

    @classmethod
    def start(
        cls,
        mlflow_cfg: DictConfig,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str,
        fence: TrialFence,
    ) -> TrialRun:
        tags = {**tags, STATE_TAG: TrialState.RUNNING.name}
        fence.check()
        tracker = RunTracker.start(mlflow_cfg, run_name=run_name, tags=tags, parent_run_id=parent_run_id)
        return cls(tracker, fence)

    @classmethod
    def resume(
        cls, mlflow_cfg: DictConfig, run_id: str, tags: Mapping[str, str], fence: TrialFence
    ) -> TrialRun:
        """Reopen the run of an earlier trial: a promotion of scheduler=asha trains on in the
        run of its configuration (unless its retry already does)."""
        fence.check()
        trial_run = cls(RunTracker.resume(mlflow_cfg, run_id), fence)
        trial_run.tracker.set_tags({**tags, STATE_TAG: TrialState.RUNNING.name})
        if ERROR_TAG in trial_run.tracker.client.get_run(run_id).data.tags:
            # The attempt whose worker died said why on the run; this one trains it on.
            trial_run.tracker.client.delete_tag(run_id, ERROR_TAG)
        return trial_run

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    def __enter__(self) -> RunTracker:
        return self.tracker

    def __exit__(self, error_type, error, traceback) -> None:
        if isinstance(error, TrialLost):
            self.tracker.abandon()  # the run is the recovery's now: as it left it
        elif error is None:
            self._end(TrialState.COMPLETE, "FINISHED")
        elif isinstance(error, optuna.TrialPruned):
            self.tracker.set_tags({NOTE_TAG: str(error)})
            self._end(TrialState.PRUNED, "FINISHED")
        elif isinstance(error, INTERRUPTS):
            self._end(TrialState.FAIL, "KILLED", "interrupted (Ctrl-C, SIGTERM or SIGUSR2); it is retried")
        else:
            self._end(TrialState.FAIL, "FAILED", error)

    def _end(self, state: TrialState, status: str, error: BaseException | str | None = None) -> None:
        try:
            self.tracker.set_tags({STATE_TAG: state.name})
        finally:
            self.tracker.end(status, error)
