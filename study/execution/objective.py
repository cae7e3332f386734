"""One Optuna trial = one `study.train` run, nested under the study's parent run in MLflow.

The objective owns the trial's MLflow run from start to end (`TrialRun`): it opens the run,
hands its tracker to `train`, and the way training ends sets the run's status and the
`optuna.trial.state` tag before the run ends. Every way a trial can fail leaves a one-line
reason on the trial, so the study's failure budget counts it. A trial that another process
failed and retried while this worker was silent is not this worker's to fail or tell: every
write checks the trial's fence first (`fencing.TrialLost`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from study.config.compose import Composer
from study.core.errors import short_error
from study.core.names import (
    CONFIG_TAG,
    FAIL_REASON_ATTR,
    MLFLOW_RUN_ATTR,
    NOT_NEEDED_ATTR,
    OPTUNA_STUDY_TAG,
    RETRY_OF_TAG,
    RUNG_TAG,
    STUDY_NAME_TAG,
    TRIAL_NUMBER_TAG,
    WORKER_ATTR,
)
from study.core.processes import process_identity
from study.execution.fencing import TrialFence, TrialLost
from study.execution.signals import WorkerSignals
from study.execution.trial_run import TrialRun
from study.search import asha
from study.search.budget import Budget
from study.search.space import SearchSpace, as_overrides

# Keys whose short names read better than their initials in a run's name (lr1.2e-3-d0.31).
SHORT_KEYS = {"learning_rate": "lr", "dropout_rate": "d", "batch_size": "bs", "epsilon": "eps"}
MAX_RUN_NAME = 100  # the MLflow UI's run column shows about this much

log = logging.getLogger("study.worker")


class NotNeeded(Exception):
    """Other workers already run or finished study.n_trials trials; this one is not needed."""


class Interrupted(BaseException):
    """The worker was told to stop mid-trial. A BaseException on purpose: Optuna then leaves
    the trial RUNNING instead of failing it, and the worker fails and retries it."""


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
        budget: Budget,
        signals: WorkerSignals | None = None,
    ):
        self.base = base  # the checked train part of the sweep config
        self.settings = settings  # the checked study part
        self.compose = compose
        self.space = space
        self.parent_run_id = parent_run_id
        self.study_dir = study_dir
        self.signals = signals or WorkerSignals()
        self.current: optuna.Trial | None = None  # the trial this worker runs now
        self.fence: TrialFence | None = None  # is `current` still this worker's
        self.budget = budget  # is a trial needed
        self.ladder = budget.ladder  # scheduler=asha: the rungs; None: each trial trains its whole budget

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial
        self.fence = TrialFence.of(trial, process_identity(), self.settings.study.heartbeat_interval)
        try:
            try:
                trial.set_user_attr(WORKER_ATTR, self.fence.owner)  # first: who owns this trial
            finally:
                self.signals.release()  # held since before study.ask(); a signal now raises here
            with self._stop_kept():
                value = self._run(trial)
            self.fence.check()  # Optuna tells the trial next: only while it is this worker's
            return value
        except KeyboardInterrupt:
            log.info("trial %d: interrupted; it will be retried", trial.number)
            raise Interrupted from None
        except optuna.TrialPruned as pruned:
            self.fence.check()
            log.info("trial %d: %s", trial.number, pruned)
            raise
        except NotNeeded as surplus:
            self.fence.check()
            trial.set_user_attr(NOT_NEEDED_ATTR, True)
            trial.set_user_attr(FAIL_REASON_ATTR, f"not needed: {surplus}")
            log.info("trial %d: not needed (%s)", trial.number, surplus)
            raise
        except Exception as error:
            self.fence.check()  # a write refused for a trial another process failed: lost, not failed
            trial.set_user_attr(FAIL_REASON_ATTR, short_error(error))
            log.exception("trial %d failed: %s", trial.number, short_error(error))
            raise

    def _stop_kept(self):
        """Errors while the worker stops are the stop's: decisions (pruned, not needed, lost)
        stay what they are."""
        return self.signals.stop_kept(keep=(optuna.TrialPruned, NotNeeded, TrialLost))

    def lost(self) -> str | None:
        """Why the current trial is no longer this worker's; None while it is."""
        if self.fence is None:
            return None
        try:
            self.fence.check()
        except TrialLost as lost:
            return str(lost)
        return None

    def _run(self, trial: optuna.Trial) -> float:
        import keras  # the backend starts in the worker, not in the driver that imports this

        from study.tracking.tensorboard import write_hparams
        from study.training.run import train

        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(other for other in trials if other.number == trial.number)
        reason = self.budget.surplus(frozen, trials)
        if reason is not None:
            raise NotNeeded(reason)
        sampled = self.space.sample(trial, self.base)
        promotion, stop, config = self._rung(trial, frozen, trials)
        # The run sees the interrupt that a store call turned into its error: it ends KILLED.
        with self._open_run(trial, frozen, trials, config, sampled) as tracker, self._stop_kept():
            logdir = self.study_dir / "tensorboard" / f"trial_{config:04d}"
            if config == trial.number:  # a new configuration (a promotion continues its run)
                trial.set_user_attr(MLFLOW_RUN_ATTR, tracker.run_id)
                write_hparams(logdir, trial.params, trial_id=f"trial_{trial.number:04d}")
            cfg = self.compose([*as_overrides(sampled), *self._budget(stop)])
            keras.backend.clear_session()  # each trial builds its model in a fresh graph
            try:
                metrics = train(
                    cfg,
                    on_epoch_end=self._reporter(trial, self.fence, self.signals),
                    tracker=tracker,
                    tensorboard_dir=logdir,
                    evaluate_test=False,  # the study's winner alone meets the test set, at the end
                    resume=promotion,  # from the checkpoint the configuration's last rung left
                )
            finally:
                # Training is over: the run's end and Optuna's tell must agree, so a signal from
                # here waits for the tell (the worker loop releases it after study.optimize).
                self.signals.hold()
            if stop is not None:
                tracker.set_tags({RUNG_TAG: str(trial.user_attrs[asha.RUNG_ATTR])})
        value = metrics["best_val_accuracy"]
        log.info("trial %d: complete, val_accuracy %.4f", trial.number, value)
        return value

    def _rung(self, trial: optuna.Trial, frozen: FrozenTrial, trials: list[FrozenTrial]):
        """(is it a promotion, how far it trains, its configuration's number): with
        scheduler=asha a rung's worth; otherwise (False, None, the trial's own number): the
        whole budget in one `fit`."""
        if self.ladder is None:
            return False, None, trial.number
        promotion = asha.is_promotion(frozen)
        rung = asha.rung_of(frozen) if promotion else asha.first_rung(frozen, trials, self.ladder)
        trial.set_user_attr(asha.RUNG_ATTR, rung)  # a retry keeps it
        _, stop = self.ladder.segment(rung, first=not promotion)
        return promotion, stop, asha.config_of(frozen)

    def _budget(self, stop: int | None) -> list[str]:
        """The segment, said once, in the config: it trains the run up to `stop`, resumably, so
        its config.yaml replays the run as far as it went (`study.train`, `study.reproduce`)."""
        if stop is None:
            return []
        key = "trainer.max_steps" if self.ladder.unit == "steps" else "trainer.epochs"
        return ["trainer.resumable=true", f"{key}={stop}"]

    def _open_run(
        self,
        trial: optuna.Trial,
        frozen: FrozenTrial,
        trials: list[FrozenTrial],
        config: int,
        sampled: Mapping[str, Any],
    ) -> TrialRun:
        """A new run for a new configuration, named by its values; a promotion reopens its
        configuration's run."""
        tags = self._tags(trial, frozen)
        if self.ladder is not None:
            tags[CONFIG_TAG] = str(config)
        if config == trial.number:
            return TrialRun.start(
                self.base.mlflow,
                run_name=trial_run_name(sampled, self.base, self.space),
                tags=tags,
                parent_run_id=self.parent_run_id,
                fence=self.fence,
            )
        run_id = next(t for t in trials if t.number == config).user_attrs[MLFLOW_RUN_ATTR]
        trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)  # first: a dead worker's cleanup ends this run
        # The run's optuna.trial.number becomes this trial's: the trial that trains it now.
        return TrialRun.resume(self.base.mlflow, run_id, tags, self.fence)

    def _tags(self, trial: optuna.Trial, frozen: FrozenTrial) -> dict[str, str]:
        tags = {
            **self.base.mlflow.tags,
            STUDY_NAME_TAG: self.settings.study.name,
            OPTUNA_STUDY_TAG: trial.study.study_name,
            TRIAL_NUMBER_TAG: str(trial.number),
        }
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is not None:
            tags[RETRY_OF_TAG] = str(retry_of)
        return tags

    @staticmethod
    def _reporter(trial: optuna.Trial, fence: TrialFence, signals: WorkerSignals):
        def report(epoch: int, metrics: dict[str, float]) -> None:
            if signals.stopping:  # the interrupt was swallowed (a store call it cut was retried)
                raise KeyboardInterrupt
            fence.check()
            trial.report(metrics["val_accuracy"], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after epoch {epoch} at val_accuracy {metrics['val_accuracy']:.4f}"
                )

        return report


def trial_run_name(sampled: Mapping[str, Any], base: DictConfig, space: SearchSpace) -> str:
    """What a trial tries, as its run's name in the MLflow UI: its model, its optimizer and each
    other value it searched, `cnn-adam-lr1.2e-3-d0.31` (its number is the run's
    optuna.trial.number tag)."""
    parts = [str(sampled.get("model", base.model.name)), str(sampled.get("optimizer", base.optimizer.name))]
    short = short_names([entry.target for entry in space.entries if not entry.is_group])
    for key, value in sampled.items():
        if key in ("model", "optimizer"):
            continue
        # A searched group other than model and optimizer (data=...) shows its option alone.
        parts.append(f"{short[key]}{short_value(value)}" if key in short else str(value))
    return "-".join(parts)[:MAX_RUN_NAME]


def short_names(keys: list[str]) -> dict[str, str]:
    """{config key: a short name}: `lr` for optimizer.learning_rate, initials for the rest
    (`h1u` for model.hidden1_units); names two keys of the space would share are spelled out."""
    keys = list(dict.fromkeys(keys))  # two entries may set one key (a learning rate per optimizer)
    leaves = {key: key.rsplit(".", 1)[-1] for key in keys}
    short = {key: SHORT_KEYS.get(leaf) or initials(leaf) for key, leaf in leaves.items()}
    shared = {name for name in short.values() if list(short.values()).count(name) > 1}
    unique_leaves = {leaf for leaf in leaves.values() if list(leaves.values()).count(leaf) == 1}
    return {
        key: name if name not in shared else (leaves[key] if leaves[key] in unique_leaves else key)
        for key, name in short.items()
    }


def initials(name: str) -> str:
    """hidden1_units -> h1u: each word's first letter and its digits."""
    words = [word for word in name.split("_") if word]
    return "".join(word[0] + "".join(c for c in word[1:] if c.isdigit()) for word in words) or name


def short_value(value: Any) -> str:
    """Two significant digits, exponents short: 1.2e-3, 0.31, 64, true."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.1e}" if value and abs(value) < 0.01 else f"{value:.2g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
