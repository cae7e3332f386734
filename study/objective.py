"""One Optuna trial = one `study.train` run, nested under the study's parent run in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from study.search_space import Composer, SearchSpace, as_overrides
from study.storage import (
    FAIL_REASON_ATTR,
    MLFLOW_RUN_ATTR,
    NOT_NEEDED_ATTR,
    WORKER_ATTR,
    worker_identity,
)
from study.tensorboard import write_hparams
from study.tracking import RunTracker, end_run_if_running, mask_secrets
from study.train import train

log = logging.getLogger(__name__)

STATE_TAG = "optuna.trial.state"


class SurplusTrialError(RuntimeError):
    """Other workers already run or finished study.n_trials trials; this one is not needed."""


class TrialObjective:
    """The objective a worker hands to `study.optimize`: the best validation accuracy."""

    def __init__(
        self,
        base: DictConfig,
        settings: DictConfig,
        compose: Composer,
        space: SearchSpace,
        parent_run_id: str,
        study_dir: Path,
    ):
        self.base = base  # the checked train part of the sweep config
        self.settings = settings  # the checked study part
        self.compose = compose
        self.space = space
        self.parent_run_id = parent_run_id
        self.study_dir = study_dir

    def __call__(self, trial: optuna.Trial) -> float:
        trials = trial.study.get_trials(deepcopy=False)
        self._refuse_surplus(trial, trials)
        sampled = self.space.sample(trial, self.base)
        frozen = next(other for other in trials if other.number == trial.number)
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        tracker = RunTracker.start(
            self.base.mlflow,
            run_name=f"{self.settings.study.name}-trial-{trial.number:04d}",
            tags=self._tags(trial, frozen),
            parent_run_id=self.parent_run_id,
        )
        run_id = tracker.run_id
        try:
            trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)  # first: cleanup after a crash needs it
            logdir = self.study_dir / "tensorboard" / f"trial_{trial.number:04d}"
            write_hparams(logdir, trial.params, trial_id=f"trial_{trial.number:04d}")
            cfg = self.compose(as_overrides(sampled))
            import keras  # here: the driver imports this module before it checks the config

            keras.backend.clear_session()  # each trial builds its model in a fresh graph
            metrics = train(
                cfg,
                on_epoch_end=self._reporter(trial),
                run_id=run_id,
                tensorboard_dir=logdir,
                evaluate_test=False,  # the study's winner alone meets the test set, at the end
            )
        except optuna.TrialPruned:
            tracker.client.set_tag(run_id, STATE_TAG, TrialState.PRUNED.name)
            raise
        except BaseException as error:
            trial.set_user_attr(FAIL_REASON_ATTR, mask_secrets(f"{type(error).__name__}: {error}")[:1000])
            tracker.client.set_tag(run_id, STATE_TAG, TrialState.FAIL.name)
            end_run_if_running(tracker.client, run_id, error)  # errors before train's own handling
            raise
        tracker.client.set_tag(run_id, STATE_TAG, TrialState.COMPLETE.name)
        return metrics["best_val_accuracy"]

    def _tags(self, trial: optuna.Trial, frozen: FrozenTrial) -> dict[str, str]:
        tags = {
            **self.base.mlflow.tags,
            "study.name": self.settings.study.name,
            "optuna.study_name": trial.study.study_name,
            "optuna.trial.number": str(trial.number),
            STATE_TAG: TrialState.RUNNING.name,
        }
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is not None:
            tags["optuna.trial.retry_of"] = str(retry_of)
        return tags

    def _refuse_surplus(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> None:
        """Workers race for the last trials; the ones beyond study.n_trials end at once."""
        earlier_active = 0
        done = 0
        for other in trials:
            if other.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done += 1
            elif other.state == TrialState.RUNNING and other.number < trial.number:
                earlier_active += 1
        if done + earlier_active >= self.settings.study.n_trials:
            trial.set_user_attr(NOT_NEEDED_ATTR, True)  # not a failure of the config
            raise SurplusTrialError(
                f"not needed: {done} trials done and {earlier_active} running reach study.n_trials"
            )

    @staticmethod
    def _reporter(trial: optuna.Trial):
        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics["val_accuracy"], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after epoch {epoch} at val_accuracy {metrics['val_accuracy']:.4f}"
                )

        return report
