"""An Optuna study of tracked training runs: `python -m study.sweep [overrides]`.

The driver checks everything it can before any store is touched (config, data files, search
space, sampler), creates or resumes the Optuna study and its MLflow parent run, starts the
worker processes (`study.worker`), shows progress, replaces workers that die, and at the end
writes the leaderboard, Optuna's plots and the winner's test-set evaluation.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import hydra
import optuna
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from study.budget import DONE, TIMEOUT, Verdict, judge
from study.cli import report_input_errors, run_cli
from study.config import CONFIG_DIR, ConfigError, check_on_this_machine, checked_config, checked_sweep_config
from study.data import load_dataset
from study.leaderboard import space_targets
from study.names import (
    BASELINE_ATTR,
    OPTUNA_STUDY_TAG,
    PARENT_RUN_ATTR,
    STUDY_NAME_TAG,
    STUDY_ROLE_TAG,
    TRIAL_NUMBER_TAG,
)
from study.pool import WorkerPool
from study.progress import StudyProgress, final_summary
from study.pruners import build_pruner
from study.samplers import build_sampler
from study.scheduler import Ladder, best_trial, ladder_for
from study.search_space import SearchSpace
from study.storage import count_trials, describe_storage_error, fail_ownerless_trials, make_storage
from study.tracking import (
    RunTracker,
    check_tracking_store,
    flatten,
    short_error,
    terminal_status,
    write_masked,
)
from study.trial_run import end_abandoned_run
from study.worker import WorkerSpec, sweep_composer

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
    load_dataset(base.data, base.trainer.seed)  # a missing or corrupt file fails here, not in trials
    compose_with = sweep_composer(str(config_dir), config_name, overrides)
    space = SearchSpace(settings.search_space)
    space.check_against(compose_with)
    build_sampler(settings.sampler, space)
    build_pruner(settings.pruner)
    check_tracking_store(base.mlflow)  # a deleted experiment or unusable store: before the storage

    ladder = ladder_for(settings, base)  # scheduler=asha: its rungs, checked here
    storage = make_storage(settings.study, base.mlflow.tracking_uri)
    study, created = create_or_load_study(settings, storage)
    check_space_unchanged(study, space, base)

    # Inputs are good: from here on the stores are written.
    session_start = time.time()
    study_dir = Path(settings.study.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    deadline = session_start + settings.study.timeout if settings.study.timeout else None
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
        if judge(trials, settings, session_start, deadline, ladder=ladder).stop is None:
            epochs = None if base.trainer.max_steps else base.trainer.epochs  # shown as epoch k/n
            Driver(study, settings, base, spec, study_dir, epochs, ladder).run()
        try:
            summary = finish(study, settings, parent, study_dir)
        finally:
            end_orphaned_runs(study, parent)
        verdict = judge(study.get_trials(deepcopy=False), settings, session_start, deadline, ladder=ladder)
        if verdict.stop not in (DONE, TIMEOUT):
            raise StudyIncompleteError(incomplete_message(settings, verdict))
    except (StudyIncompleteError, KeyboardInterrupt, SystemExit) as error:
        end_quietly(parent, terminal_status(error), error)
        raise
    except Exception as error:  # a full disk, a store that cannot be written, ...
        end_quietly(parent, "FAILED", error)
        raise session_failure(study, settings, session_start, deadline, study_dir, error, ladder) from error
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
    session_start: float,
    deadline: float | None,
    study_dir: Path,
    error: Exception,
    ladder: Ladder | None = None,
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
        verdict = judge(study.get_trials(deepcopy=False), settings, session_start, deadline, ladder=ladder)
        return StudyIncompleteError(incomplete_message(settings, verdict, reason))
    except Exception:  # the study store itself is out of reach
        return StudyIncompleteError(
            f"study {settings.study.name}: {reason}. Run the command again to resume."
        )


def check_space_unchanged(study: optuna.Study, space: SearchSpace, base: DictConfig) -> None:
    """A resumed study keeps its search space: Optuna cannot mix distributions of one name."""
    current = space.distributions()
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            if name not in current:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(distribution, current[name])
            except ValueError:
                before, now = describe_distribution(distribution), describe_distribution(current[name])
                raise ConfigError(
                    f"search_space.{name}: changed since study {study.study_name} began "
                    f"(was {before}, now {now}); "
                    "restore it, or start a new study with another study.name"
                ) from None


def describe_distribution(distribution: optuna.distributions.BaseDistribution) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"choices {list(distribution.choices)}"
    return f"{type(distribution).__name__} {distribution.low}..{distribution.high}"


def create_or_load_study(settings: DictConfig, storage) -> tuple[optuna.Study, bool]:
    """(study, True) for the one driver that created it; every other driver loads it."""
    try:
        study = optuna.create_study(
            study_name=settings.study.name, storage=storage, direction=settings.study.direction
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=settings.study.name, storage=storage), False
    except Exception as error:  # a damaged or truncated store: name it, never replace it
        raise ConfigError(describe_storage_error(error, settings.study.storage)) from None


def parent_run(
    study: optuna.Study,
    created: bool,
    storage,
    settings: DictConfig,
    base: DictConfig,
    cfg: DictConfig,
    study_dir: Path,
) -> RunTracker:
    """The study's MLflow parent run: made by the driver that created the study (the storage
    decides that atomically), found by every other driver and on every resume."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    deadline = time.time() + PARENT_WAIT_SECONDS
    # The creating driver sets the parent run before any trial exists; wait for it then.
    while run_id is None and not created and not study.get_trials() and time.time() < deadline:
        time.sleep(POLL_SECONDS)
        study = optuna.load_study(study_name=study.study_name, storage=storage)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        log.info("study %s: parent run %s", settings.study.name, run_id)
        return RunTracker.resume(base.mlflow, run_id)
    tracker = RunTracker.start(
        base.mlflow,
        run_name=settings.study.name,
        tags={**base.mlflow.tags, **parent_tags(settings.study.name), OPTUNA_STUDY_TAG: study.study_name},
    )
    try:
        study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
        study_settings = OmegaConf.to_container(settings)
        study_settings.pop("search_space")
        tracker.log_params(flatten(study_settings))
        tracker.log_artifact(
            write_masked(study_dir / "search_space.yaml", OmegaConf.to_yaml(settings.search_space))
        )
        resolved = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))
        tracker.log_artifact(write_masked(study_dir / "sweep_config.yaml", resolved))
    except BaseException as error:
        tracker.end(terminal_status(error), error)
        raise
    return tracker


def parent_tags(study_name: str) -> dict[str, str]:
    return {STUDY_NAME_TAG: study_name, STUDY_ROLE_TAG: "parent"}


class Driver:
    """Watches the study while the workers run: progress, dead workers, ownerless trials."""

    def __init__(
        self,
        study: optuna.Study,
        settings: DictConfig,
        base: DictConfig,
        spec: WorkerSpec,
        study_dir: Path,
        epochs: int | None = None,
        ladder: Ladder | None = None,
    ):
        self.study = study
        self.settings = settings
        self.tracking_uri = base.mlflow.tracking_uri
        self.spec = spec
        self.pool = WorkerPool(settings.study, spec, study_dir / "logs")
        self.ladder = ladder  # scheduler=asha: its rungs (run_sweep checked them)
        workers = len(self.pool.workers)
        self.progress = StudyProgress.from_settings(
            settings, epochs, workers, self.pool.logs, ladder, deadline=spec.deadline
        )

    def run(self) -> None:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
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
        return judge(trials, self.settings, self.spec.session_start, self.spec.deadline, ladder=self.ladder)


def finish(study: optuna.Study, settings: DictConfig, parent: RunTracker, study_dir: Path) -> dict:
    """Plots, the winner on the test set and in the Model Registry, the leaderboard, and a
    summary that says what won, by how much, and where to look further."""
    # Here, not at the top: the driver starts the backend only to evaluate the winner.
    from study.results import evaluate_winner, leaderboard, log_plots
    from study.tensorboard import write_hparams_config

    counts = count_trials(study)
    parent.log_metrics(
        {"trials_complete": counts.complete, "trials_pruned": counts.pruned, "trials_failed": counts.failed}
    )
    targets = space_targets(settings.search_space)
    plots = study_dir / "plots"
    plots.mkdir(exist_ok=True)
    print(f"writing Optuna's plots to {plots} ...", flush=True)
    log_plots(study, parent.client, parent.run_id, plots, targets)
    write_hparams_config(
        study_dir / "tensorboard",
        sorted({name for trial in study.trials for name in trial.params}),
        ["accuracy/validation", "loss/validation", "accuracy/train", "loss/train"],
    )
    table_file = study_dir / "leaderboard.csv"
    summary = {"study": settings.study.name, **counts.__dict__, "leaderboard": str(table_file)}
    if counts.complete:
        registered = settings.study.registered_model
        where = f" and registering it as MLflow model {registered}" if registered else ""
        print(
            f"evaluating the winner (trial {best_trial(study.trials).number}) on the test set{where} ...",
            flush=True,
        )
        summary.update(evaluate_winner(study, parent.client, parent.run_id, study_dir, registered))
    table = leaderboard(study, targets, summary.get("best_trial_test_accuracy"))
    table.to_csv(table_file, index=False)
    parent.log_artifact(table_file)
    width = shutil.get_terminal_size((200, 40)).columns  # wide tables wrap by columns, not mid-line
    with pd.option_context("display.width", width, "display.max_columns", 30):
        print(table.to_string(index=False, max_colwidth=48, na_rep=""))
    print(final_summary(study, settings, parent.client.tracking_uri, study_dir, summary, targets))
    return summary


def end_orphaned_runs(study: optuna.Study, parent: RunTracker) -> int:
    """End every child run still RUNNING whose trial is not: a worker died between starting
    the run and recording it on the trial, or could not end it (store unreachable)."""
    client = parent.client
    states = {str(trial.number): trial.state for trial in study.get_trials(deepcopy=False)}
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    ended = 0
    for run in runs:
        state = states.get(run.data.tags.get(TRIAL_NUMBER_TAG, ""), TrialState.FAIL)
        if state != TrialState.RUNNING:
            final = state if state.is_finished() else TrialState.FAIL
            ended += end_abandoned_run(client, run.info.run_id, final, "its worker is gone")
    return ended


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
@report_input_errors
def main(cfg: DictConfig) -> float | None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hydra_cfg = HydraConfig.get()
    config_dir = next(
        (s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main"), str(CONFIG_DIR)
    )
    # Workers compose the same config: the task overrides and every extra config folder
    # (hydra.searchpath, --config-dir), as one search path.
    extra = [
        f"{source.schema}://{source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider not in ("main", "hydra", "schema") and source.schema in ("file", "pkg")
    ]
    search_path = [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []
    overrides = [*search_path, *hydra_cfg.overrides.task]
    try:
        summary = run_sweep(cfg, overrides, config_dir.removeprefix("file://"), hydra_cfg.job.config_name)
    except StudyIncompleteError as error:  # the parent run says FAILED; the user needs one line
        print(f"study.sweep: error: {error}", file=sys.stderr)
        sys.exit(1)
    return summary.get("best_val_accuracy")


if __name__ == "__main__":
    run_cli(main)
