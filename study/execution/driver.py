"""An Optuna study of tracked training runs: `python -m study.sweep [overrides]`.

The driver checks everything it can before any store is touched (config, data files, search
space, sampler), creates or resumes the Optuna study and its MLflow parent run, starts the
worker processes (`study.worker`), shows progress, replaces workers that die, and at the end
writes the leaderboard, Optuna's plots and the winner's test-set evaluation.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from study.config.checks import check_on_this_machine, checked_config, checked_sweep_config
from study.config.compose import sweep_composer
from study.config.schema import CONFIG_DIR
from study.core.errors import short_error
from study.core.names import (
    BASELINE_ATTR,
)
from study.execution.cluster import ClusterWatch, cancel_workers, open_engine
from study.execution.outputs import claim_outputs, outputs_written_elsewhere, release_claim, write_outputs
from study.execution.parent import (
    check_budget_unchanged,
    check_space_unchanged,
    create_or_load_study,
    parent_run,
    training_budget,
)
from study.execution.pool import WorkerPool
from study.execution.recovery import end_orphaned_runs, fail_ownerless_trials
from study.execution.spec import WorkerSpec
from study.execution.storage import make_storage
from study.reporting.live import StudyProgress
from study.reporting.noise import study_command
from study.search.asha import ladder_for
from study.search.budget import DONE, TIMEOUT, Budget, Verdict
from study.search.pruners import build_pruner
from study.search.samplers import build_sampler
from study.search.space import SearchSpace
from study.tracking.runs import RunTracker, terminal_status
from study.tracking.store import check_tracking_store
from study.training.data import load_dataset

log = logging.getLogger(__name__)

PARENT_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0


def run_sweep(
    cfg: DictConfig,
    overrides: list[str] | None = None,
    config_dir: str | Path = CONFIG_DIR,
    config_name: str = "sweep",
) -> dict:
    """Run (or resume) the study `cfg` describes; returns its summary.

    `overrides` are the command-line overrides `cfg` was composed with: workers compose the
    same config from them, plus each trial's sampled values.
    """
    overrides = list(overrides or [])
    settings, base = checked_sweep_config(cfg), checked_config(cfg)
    check_on_this_machine(settings)  # study.gpus: the GPUs this machine has
    dataset = load_dataset(base.data, base.trainer.seed)  # a missing or corrupt file fails here
    if "builder" in base.model:  # the user's model, built once: a bad builder writes nothing
        from study.training.models import build_model

        build_model(base.model, dataset.image_shape, dataset.num_classes)
    compose_with = sweep_composer(str(config_dir), config_name, overrides)
    space = SearchSpace(settings.search_space)
    space.check_against(compose_with)
    build_sampler(settings.sampler, space)
    build_pruner(settings.pruner)
    check_tracking_store(base.mlflow)  # a deleted experiment or unusable store: before the storage
    engine = open_engine(settings, base)  # launcher=slurm|ray: the cluster, and stores its nodes reach
    if engine is not None and settings.launcher.cancel:
        return cancel_workers(engine, settings)

    ladder = ladder_for(settings, base)  # scheduler=asha: its rungs, checked here
    storage = make_storage(settings.study, base.mlflow.tracking_uri)
    study, created = create_or_load_study(settings, storage)
    check_space_unchanged(study, space, base)
    check_budget_unchanged(study, created, training_budget(base, dataset.digest), storage)

    # Inputs are good: from here on the stores are written.
    session_start = time.time()
    study_dir = Path(settings.study.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    deadline = session_start + settings.study.timeout if settings.study.timeout else None
    budget = Budget.of(settings, session_start, deadline, ladder)
    parent = None
    try:
        parent = parent_run(study, created, storage, settings, base, cfg, study_dir)
        if created and settings.study.enqueue_defaults:
            study.enqueue_trial(
                space.base_values(base), user_attrs={BASELINE_ATTR: True}, skip_if_exists=True
            )
        fail_ownerless_trials(study, settings.study, base.mlflow.tracking_uri)  # an earlier session's
        spec = WorkerSpec(
            str(config_dir),
            config_name,
            overrides,
            parent.run_id,
            session_start=session_start,
            deadline=deadline,
        )
        trials = study.get_trials(deepcopy=False)
        searching = budget.judge(trials).stop is None
        if searching:
            epochs = None if base.trainer.max_steps else base.trainer.epochs  # shown as epoch k/n
            if engine is None:
                Driver(study, settings, base, spec, study_dir, budget, epochs).run()
            else:
                release_claim(storage, settings)  # left by an earlier end, before more trials were asked for
                tracking_uri = base.mlflow.tracking_uri
                watch = ClusterWatch(engine, study, settings, tracking_uri, spec, budget, epochs, study_dir)
                if not watch.run():
                    return {"study": settings.study.name, "detached": True}  # the parent run goes on
        verdict = budget.judge(study.get_trials(deepcopy=False))
        if verdict.done == 0:  # nothing to rank, plot or crown (a timeout shorter than a trial)
            end_orphaned_runs(study, parent)
            raise StudyIncompleteError(
                incomplete_message(settings, verdict, f"{verdict.reason()}, none finished")
            )
        # On a cluster a worker may write them; a done study run again takes over the claim.
        if engine is not None and not claim_outputs(storage, settings, take_over=not searching):
            return outputs_written_elsewhere(study, settings, parent, study_dir)
        command = study_command(config_dir, config_name, overrides)  # the summary may print it
        summary = write_outputs(
            study,
            settings,
            base,
            parent,
            study_dir,
            command,
            verdict.stop == DONE,
            claimed=engine is not None,
        )
        verdict = budget.judge(study.get_trials(deepcopy=False))
        if verdict.stop not in (DONE, TIMEOUT):
            raise StudyIncompleteError(incomplete_message(settings, verdict))
    except (StudyIncompleteError, KeyboardInterrupt, SystemExit) as error:
        end_quietly(parent, terminal_status(error), error)
        raise
    except Exception as error:  # a full disk, a store that cannot be written, ...
        end_quietly(parent, "FAILED", error)
        raise session_failure(study, settings, budget, study_dir, error) from error
    parent.end("FINISHED")
    return summary


class StudyIncompleteError(RuntimeError):
    """This session stopped before study.n_trials trials were done."""


def incomplete_message(settings: DictConfig, verdict: Verdict, reason: str | None = None) -> str:
    counts = verdict.counts
    what = "configurations" if verdict.configurations_done is not None else "trials"
    return (
        f"study {settings.study.name}: {verdict.done} of {settings.study.n_trials} {what} done: "
        f"{reason or verdict.reason()}; {counts.running} still RUNNING. Run the command again to resume."
    )


def end_quietly(parent: RunTracker | None, status: str, error: BaseException | None) -> None:
    """End the parent run; a store that cannot be written must not hide the session's error."""
    if parent is None:
        return
    try:
        parent.end(status, error)
    except Exception as end_error:
        log.warning("could not end the study's parent run %s: %s", parent.run_id, short_error(end_error))


def session_failure(
    study: optuna.Study,
    settings: DictConfig,
    budget: Budget,
    study_dir: Path,
    error: Exception,
) -> StudyIncompleteError:
    """The one line for a session that broke after the stores were written; the traceback
    goes to logs/driver.log (when the disk still takes it)."""
    details = study_dir / "logs" / "driver.log"
    try:
        details.parent.mkdir(parents=True, exist_ok=True)
        with details.open("a") as file:
            file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {''.join(traceback.format_exception(error))}")
        where = f"; details in {details}"
    except OSError:
        where = ""
    reason = f"the session failed ({short_error(error)}{where})"
    try:
        verdict = budget.judge(study.get_trials(deepcopy=False))
        return StudyIncompleteError(incomplete_message(settings, verdict, reason))
    except Exception:  # the study store itself is out of reach
        return StudyIncompleteError(
            f"study {settings.study.name}: {reason}. Run the command again to resume."
        )


class Driver:
    """Watches the study while the workers run: progress, dead workers, ownerless trials."""

    def __init__(
        self,
        study: optuna.Study,
        settings: DictConfig,
        base: DictConfig,
        spec: WorkerSpec,
        study_dir: Path,
        budget: Budget,
        epochs: int | None = None,
        pool: WorkerPool | None = None,
    ):
        self.study = study
        self.settings = settings
        self.tracking_uri = base.mlflow.tracking_uri
        self.spec = spec
        self.pool = pool or WorkerPool(settings.study, spec, study_dir / "logs")
        self.budget = budget
        workers = len(self.pool.workers)
        self.progress = StudyProgress.from_settings(
            settings, epochs, workers, self.pool.logs, budget.ladder, deadline=budget.deadline
        )

    def run(self) -> None:
        # SIGTERM stops the workers as Ctrl-C does; a Ray actor runs this in a thread of its own,
        # where no handler can be set (Ray kills the actor, and its workers die with it).
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
        try:
            self.pool.start()
            while self.pool.alive:
                time.sleep(POLL_SECONDS)
                trials = self.study.get_trials(deepcopy=False)  # one query a poll, for all below
                verdict = self._judge(trials)
                self.progress.update(verdict.counts, trials, done=verdict.done)
                fail_ownerless_trials(self.study, self.settings.study, self.tracking_uri, trials)
                self.pool.reap(may_restart=lambda: self._judge().stop is None)
        except KeyboardInterrupt:
            self.pool.stop()
            raise
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
            self.pool.remove_spec_files()
            # The trials of workers that died (or were killed just now) are failed and retried.
            fail_ownerless_trials(self.study, self.settings.study, self.tracking_uri)
            trials = self.study.get_trials(deepcopy=False)
            verdict = self._judge(trials)
            self.progress.update(verdict.counts, trials, force=True, done=verdict.done)
            self.progress.close(verdict.counts, trials)

    def _judge(self, trials: list[FrozenTrial] | None = None) -> Verdict:
        trials = self.study.get_trials(deepcopy=False) if trials is None else trials
        return self.budget.judge(trials)
