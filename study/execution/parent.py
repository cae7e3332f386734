"""The study's two records: the Optuna study (created by one driver, loaded by every other)
and its MLflow parent run, under which every trial's run is nested."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from study.core.errors import ConfigError
from study.core.masking import write_masked
from study.core.names import (
    DATA_DIGEST_TAG,
    OPTUNA_STUDY_TAG,
    PARENT_RUN_ATTR,
    STUDY_NAME_TAG,
    STUDY_ROLE_TAG,
    TRAINING_BUDGET_ATTR,
)
from study.execution.storage import describe_storage_error
from study.search.space import SearchSpace
from study.tracking.runs import RunTracker, flatten, terminal_status

log = logging.getLogger(__name__)

PARENT_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0


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


def training_budget(base: DictConfig, data_digest: str) -> dict[str, Any]:
    """What a trial's score depends on besides its sampled values: how long it trains and on
    which examples (the digest of the arrays covers the data's files, split and limits)."""
    trainer = base.trainer
    return {
        "trainer.epochs": trainer.epochs,
        "trainer.max_steps": trainer.max_steps,
        "trainer.batch_size": trainer.batch_size,
        DATA_DIGEST_TAG: data_digest,
    }


def check_budget_unchanged(study: optuna.Study, created: bool, budget: dict[str, Any], storage) -> None:
    """A resumed study keeps its training budget and data: otherwise its leaderboard and margins
    would compare 4-epoch trials with 1-epoch ones. The driver that creates the study records
    them; a driver that finds none records its own (a study made before they were recorded, or
    whose creator died before it did)."""
    if created:
        study.set_user_attr(TRAINING_BUDGET_ATTR, budget)
        return
    recorded = recorded_budget(study, storage)
    if recorded is None:
        study.set_user_attr(TRAINING_BUDGET_ATTR, budget)
        return
    for key, value in budget.items():
        if key in recorded and recorded[key] != value:
            was, now = (shorter(key, v) for v in (recorded[key], value))
            decided = "; data.*, trainer.seed and the data files decide it" if key == DATA_DIGEST_TAG else ""
            raise ConfigError(
                f"{key}: changed since study {study.study_name} began (was {was}, now {now}{decided}), "
                "so new trials would not compare with earlier ones; "
                "restore it, or start a new study with another study.name"
            )


def shorter(key: str, value: Any) -> str:
    """A budget value as a refusal names it: a digest's first hex digits are enough to tell."""
    return f"{value[:19]}..." if key == DATA_DIGEST_TAG and isinstance(value, str) else str(value)


def recorded_budget(study: optuna.Study, storage) -> dict[str, Any] | None:
    """The budget the study's creator recorded; a driver that started beside it waits for it,
    as for the parent run (the creator records it first, before the parent run exists)."""
    deadline = time.time() + PARENT_WAIT_SECONDS
    while True:
        recorded = study.user_attrs.get(TRAINING_BUDGET_ATTR)
        begun = PARENT_RUN_ATTR in study.user_attrs or study.get_trials(deepcopy=False)
        if recorded is not None or begun or time.time() >= deadline:
            return recorded
        time.sleep(POLL_SECONDS)
        study = optuna.load_study(study_name=study.study_name, storage=storage)


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
