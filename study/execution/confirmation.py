"""A study's confirmation (study.confirm_top, study.confirm_seeds): its best configurations
trained again with other seeds, so that the winner is the best mean over seeds and not the
luckiest seed. On the default study, a +0.0004 lead measured 14 times smaller than the spread
of one configuration's val_accuracy across three seeds.

When the search is done, the driver trains the study.confirm_top best configurations (in the
single-seed order of `ranked_configurations`) with study.confirm_seeds other seeds each:
trainer.seed + 1, + 2, ..., the seeds of `study.reproduce --seeds`, through the same
`replay.train_seeds`. Each training is a run of its own in this process, from the
configuration's logged config.yaml, nested under the study's parent run and tagged with the
configuration's run, trial and seed; `RunTracker` ends it FINISHED, FAILED or KILLED. The mean
and std of val_accuracy over the trial's own seed and the new ones go on the configuration's
run, on the parent and on the study (`search.confirmation`), where the ranking reads them.

Run again (the driver was killed, or the same command once more), a seed whose run FINISHED is
not trained again, and a run left RUNNING by a driver that is gone is ended KILLED and its seed
trained again. A finished study run again with the two keys goes straight to its end: this.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
from collections.abc import Iterator, Mapping

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from study.config.checks import checked_config
from study.core.config_files import load_logged_config
from study.core.errors import error_line
from study.core.names import (
    CONFIRM_MEAN_METRIC,
    CONFIRM_SEEDS_METRIC,
    CONFIRM_STD_METRIC,
    CONFIRM_TRIAL_METRIC,
    CONFIRMATION_DRIVER_TAG,
    CONFIRMATION_OF_TAG,
    CONFIRMATION_SEED_TAG,
    CONFIRMATION_TRIAL_TAG,
    METRIC,
    MLFLOW_RUN_ATTR,
    OPTUNA_STUDY_TAG,
    REPLAY_OF_TAG,
    STUDY_NAME_TAG,
)
from study.core.processes import gone_from_this_machine, process_identity
from study.search.confirmation import Confirmation, confirmation_key, with_confirmations
from study.search.ranking import best_trial, ranked_configurations
from study.tracking.runs import RunTracker
from study.training.replay import TrainOne, mean_and_std, other_seeds, train_seeds, with_tracking_uri

log = logging.getLogger(__name__)

SCORE = "best_val_accuracy"  # a run's score, as a trial's value is


def confirm_best(
    study: optuna.Study, settings: DictConfig, base: DictConfig, parent: RunTracker, search_done: bool
) -> None:
    """Confirm the study's best configurations, when study.confirm_top and study.confirm_seeds
    ask for it and the search is done (a session stopped by study.timeout leaves it to the
    session that finishes the search: the best configurations may change until then)."""
    top, n_seeds = settings.study.confirm_top, settings.study.confirm_seeds
    if not (top and n_seeds):
        return
    if not search_done:
        print("study.confirm_top: not yet: the search is not done; a session that finishes it confirms")
        return
    configurations = ranked_configurations(study.get_trials(deepcopy=False))[:top]  # single-seed order
    print(
        f"confirming the best {len(configurations)} configurations with {n_seeds} more seeds each ...",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill ends the run KILLED
    try:
        with quiet_runs():
            for trial in configurations:
                try:
                    confirm_configuration(study, trial, n_seeds, base, parent)
                except Exception as error:  # its config.yaml unreadable, its store refusing: this one only
                    print(f"  trial {trial.number}: not confirmed: {error_line(error)}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    log_winner(study, parent)


@contextlib.contextmanager
def quiet_runs() -> Iterator[None]:
    """Each run's own INFO lines (its id, its score) left out of the driver's console: the
    confirmation prints one line per seed."""
    loggers = [logging.getLogger(name) for name in ("study.tracking.runs", "study.training.run")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def confirm_configuration(
    study: optuna.Study, trial: FrozenTrial, n_seeds: int, base: DictConfig, parent: RunTracker
) -> Confirmation:
    """Train the trial's configuration with `n_seeds` other seeds (those not trained already)
    and record the mean and std over its own seed and those."""
    run_id = trial.user_attrs[MLFLOW_RUN_ATTR]
    cfg = logged_config(parent, run_id, base.mlflow.tracking_uri)
    seeds = other_seeds(cfg, n_seeds)
    scores, failed = finished_seeds(parent, trial.number)
    missing = [seed for seed in seeds if seed not in scores and seed not in failed]
    print(f"  trial {trial.number}: {METRIC} {trial.value:.4f} with seed {cfg.trainer.seed}", flush=True)
    for run in train_seeds(cfg, missing, trainer_in_driver(study, trial, run_id, parent)):
        outcome = f"{run.metrics[SCORE]:.4f}" if SCORE in run.metrics else "failed (its run has the error)"
        print(f"    seed {run.seed}: {outcome}", flush=True)
    # Read back, not taken from this driver's runs: drivers that finish the study together
    # each train the seeds, and all count the earliest run of each seed, so they agree.
    scores, failed = finished_seeds(parent, trial.number)
    values = [trial.value, *(scores[seed] for seed in seeds if seed in scores)]
    confirmation = Confirmation(*mean_and_std(values), len(values))
    earlier = f" ({len(seeds) - len(missing)} seeds trained earlier)" if len(missing) < len(seeds) else ""
    if failed:
        earlier += f"; seeds {sorted(failed)} failed and are left out"
    print(
        f"    mean {confirmation.mean:.4f} ± {confirmation.std:.4f} over {confirmation.seeds} seeds{earlier}",
        flush=True,
    )
    record(study, trial, confirmation, parent, run_id)
    return confirmation


def logged_config(parent: RunTracker, run_id: str, tracking_uri: str) -> DictConfig:
    """The configuration as its run trained it (config.yaml), logged where the study logs."""
    with tempfile.TemporaryDirectory(prefix="study-confirm-") as scratch:
        path = parent.client.download_artifacts(run_id, "config.yaml", scratch)
        cfg = checked_config(load_logged_config(path, name=f"run {run_id}: config.yaml"))
    return with_tracking_uri(cfg, tracking_uri)


def finished_seeds(parent: RunTracker, number: int) -> tuple[dict[int, float], set[int]]:
    """({seed: val_accuracy} of trial `number`'s confirmation runs that finished (the earliest,
    should two drivers of the study both have trained a seed), the seeds whose training failed
    and never finished: a NaN loss fails again, so it is not trained again). A run left RUNNING
    by a driver of this machine that is gone is ended KILLED: its seed is trained again."""
    client = parent.client
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent.run_id}' and tags.`{CONFIRMATION_TRIAL_TAG}` = '{number}'"
        ),
        order_by=["attributes.start_time ASC"],
    )
    scores: dict[int, float] = {}
    failed: set[int] = set()
    for run in runs:
        seed = int(run.data.tags[CONFIRMATION_SEED_TAG])
        if run.info.status == "FINISHED" and SCORE in run.data.metrics:
            scores.setdefault(seed, run.data.metrics[SCORE])
        elif run.info.status == "FAILED":
            failed.add(seed)
        elif run.info.status == "RUNNING" and driver_gone(run.data.tags):
            end_abandoned(parent, run.info.run_id)
    return scores, failed - set(scores)


def driver_gone(tags: Mapping[str, str]) -> bool:
    """The driver that trains a confirmation run is no longer running (this machine's only:
    another machine's driver may still be training it)."""
    return gone_from_this_machine(tags.get(CONFIRMATION_DRIVER_TAG, ""))


def end_abandoned(parent: RunTracker, run_id: str) -> None:
    RunTracker(parent.client, run_id).end("KILLED", "its driver is gone; the seed is trained again")
    log.info("confirmation run %s: its driver is gone; ended KILLED", run_id)


def trainer_in_driver(study: optuna.Study, trial: FrozenTrial, run_id: str, parent: RunTracker) -> TrainOne:
    """One seed of the trial's configuration, trained in this process into a run nested under
    the parent, tagged so that a later session finds it (`finished_seeds`)."""
    name = parent.client.get_run(run_id).info.run_name

    def train_one(cfg: DictConfig, seed: int) -> tuple[str, Mapping[str, float]]:
        import keras  # here: the driver starts the backend only when it trains or evaluates

        from study.training.run import train

        tags = {
            **{key: value for key, value in cfg.mlflow.tags.items() if key != REPLAY_OF_TAG},
            STUDY_NAME_TAG: study.study_name,
            OPTUNA_STUDY_TAG: study.study_name,
            CONFIRMATION_OF_TAG: run_id,
            CONFIRMATION_TRIAL_TAG: str(trial.number),
            CONFIRMATION_SEED_TAG: str(seed),
            CONFIRMATION_DRIVER_TAG: process_identity(),
        }
        tracker = RunTracker.start(
            cfg.mlflow, run_name=f"{name}-seed{seed}", tags=tags, parent_run_id=parent.run_id
        )
        try:
            with tracker:  # ends the run FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM)
                keras.backend.clear_session()  # each run builds its model in a fresh graph
                # evaluate_test=False: the winner alone meets the test set
                metrics = train(cfg, tracker=tracker, evaluate_test=False)
        except Exception as error:  # a seed that fails (a NaN loss) fails its run, not the study
            log.warning("confirmation of trial %d, seed %d: %s", trial.number, seed, error_line(error))
            return tracker.run_id, {}
        return tracker.run_id, metrics

    return train_one


def record(
    study: optuna.Study, trial: FrozenTrial, confirmation: Confirmation, parent: RunTracker, run_id: str
) -> None:
    """The confirmation on the configuration's run, on the parent and, last, on the study: its
    attribute there says the metrics are logged, so a session run again writes nothing twice."""
    key = confirmation_key(trial.number)
    if study.user_attrs.get(key) == confirmation.as_attrs():
        return
    run = RunTracker(parent.client, run_id)
    run.log_metrics(
        {
            CONFIRM_MEAN_METRIC: confirmation.mean,
            CONFIRM_STD_METRIC: confirmation.std,
            CONFIRM_SEEDS_METRIC: confirmation.seeds,
        }
    )
    run.flush()
    parent.log_metrics(
        {
            CONFIRM_TRIAL_METRIC.format(number=trial.number, stat="mean"): confirmation.mean,
            CONFIRM_TRIAL_METRIC.format(number=trial.number, stat="std"): confirmation.std,
        }
    )
    parent.flush()
    study.set_user_attr(key, confirmation.as_attrs())


def log_winner(study: optuna.Study, parent: RunTracker) -> None:
    """The confirmed winner's mean and std on the parent, beside the winner's other metrics."""
    winner = best_trial(with_confirmations(study.get_trials(deepcopy=False), study.user_attrs))
    confirmation = Confirmation.of(winner) if winner is not None else None
    if confirmation is None:
        return
    logged = parent.client.get_run(parent.run_id).data.metrics
    metrics = {
        CONFIRM_MEAN_METRIC: confirmation.mean,
        CONFIRM_STD_METRIC: confirmation.std,
        CONFIRM_SEEDS_METRIC: confirmation.seeds,
    }
    if any(logged.get(name) != value for name, value in metrics.items()):
        parent.log_metrics(metrics)
        parent.flush()
