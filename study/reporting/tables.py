"""The tables of `python -m study.report`, from the tracking store: every run of an experiment,
or a study's trials (states, values and sampled params from its Optuna storage, the one the
study's parent run logged, or --storage; from MLflow alone when that cannot be opened), in the
one leaderboard design."""

from __future__ import annotations

import math
import re
import sys
import tempfile
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from study.core.config_files import load_logged_config
from study.core.masking import mask_secrets
from study.core.names import (
    CONFIRMATION_OF_TAG,
    ERROR_TAG,
    METRIC,
    MLFLOW_RUN_ATTR,
    PARENT_ROLE,
    STATE_TAG,
    STUDY_NAME_TAG,
    STUDY_ROLE_TAG,
    TEST_METRIC,
    TRIAL_NUMBER_TAG,
)
from study.reporting.leaderboard import (
    DURATION,
    EPOCHS,
    ERROR,
    ERROR_LENGTH,
    RUN_ID,
    RUN_NAME,
    STATE,
    STUDY,
    TRIAL,
    leaderboard,
    space_targets,
    trial_config,
    trial_rows,
)
from study.search.confirmation import with_confirmations
from study.tracking.store import missing_local_store

# MLflow run columns -> the shared leaderboard columns (study/reporting/leaderboard.py).
RUN_COLUMNS = {
    f"tags.{STUDY_NAME_TAG}": STUDY,
    f"tags.{TRIAL_NUMBER_TAG}": TRIAL,
    "tags.mlflow.runName": RUN_NAME,
    "status": STATE,
    "metrics.best_val_accuracy": METRIC,
    "metrics.test_accuracy": TEST_METRIC,
    "metrics.epochs": EPOCHS,
    "duration_s": DURATION,
    "run_id": RUN_ID,
}
# Params that differ between runs without saying anything about the model: not columns.
NOT_CONFIG = ("mlflow.", "runs_dir", "data.path", "trainer.verbose")
GROUPS = ("data", "model", "optimizer")  # `model.name` is shown as `model`


class ReportError(ValueError):
    pass


def report_file(output_dir: str | Path, name: str, suffix: str) -> Path:
    """The report file of a study or experiment name, always inside `output_dir`: the name is
    not a path (`/abs/path`, `../x`), so separators, dots at the ends and the like become `_`."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "report"
    return Path(output_dir) / f"{stem}{suffix}"


def runs_frame(experiment: str, filter_string: str = "") -> pd.DataFrame:
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=filter_string, max_results=50_000, output_format="pandas"
    )
    if runs.empty:
        return runs
    runs["duration_s"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds().round(1)
    return runs


def experiment_table(experiment: str) -> pd.DataFrame:
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ReportError(f"--experiment {experiment}: no such experiment")
    runs = runs_frame(experiment)
    keys = varying_config_keys(runs)
    return leaderboard([run_row(run, keys) for _, run in runs.iterrows()], keys)


def study_table(name: str, storage: str | None, all_rungs: bool = False) -> pd.DataFrame:
    """A study's configurations (each a trial that has an MLflow run, or with `all_rungs` under
    scheduler=asha each of its trials), from its Optuna storage; from MLflow alone when the
    storage cannot be opened (one run per configuration)."""
    parent = find_parent(name)
    targets = search_space_targets(parent["run_id"])
    study = load_study(name, storage or parent.get("params.study.storage"))
    if study is None:
        experiment = mlflow.get_experiment(parent["experiment_id"]).name
        children = runs_frame(experiment, f"tags.mlflow.parentRunId = '{parent['run_id']}'")
        if f"tags.{CONFIRMATION_OF_TAG}" in children:  # seeds of a confirmation, not configurations
            children = children[children[f"tags.{CONFIRMATION_OF_TAG}"].isna()]
        keys = list(dict.fromkeys(targets.values())) or varying_config_keys(children)
        rows = [run_row(run, keys) for _, run in children.iterrows()]
        for row in rows:
            row.pop(RUN_NAME, None)
    else:
        trials = with_confirmations(study.get_trials(deepcopy=False), study.user_attrs)  # the winner's mean
        trials = [t for t in trials if MLFLOW_RUN_ATTR in t.user_attrs]
        test = parent.get("metrics.best_trial_test_accuracy")
        rows = trial_rows(trials, targets, test, all_rungs)
        keys = list(dict.fromkeys(key for trial in trials for key in trial_config(trial, targets)))
    for row in rows:
        row[STUDY] = name
    return leaderboard(rows, keys)


def find_parent(name: str) -> pd.Series:
    parents = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{STUDY_NAME_TAG}` = '{name}' and tags.`{STUDY_ROLE_TAG}` = '{PARENT_ROLE}'",
        output_format="pandas",
    )
    if parents.empty:
        raise ReportError(
            f"--study {name}: no study of that name in {mask_secrets(mlflow.get_tracking_uri())}"
        )
    return parents.iloc[0]  # the newest, when a name was reused with a new storage


def run_row(run: pd.Series, config_keys: list[str]) -> dict:
    """One MLflow run (a search_runs row) in the leaderboard's columns."""
    row = {column: _value(run.get(source)) for source, column in RUN_COLUMNS.items()}
    if row[STATE] in ("FINISHED", "KILLED", "FAILED") and isinstance(run.get(f"tags.{STATE_TAG}"), str):
        row[STATE] = run[f"tags.{STATE_TAG}"]  # a trial: COMPLETE, PRUNED or FAIL, as Optuna says
    for key in config_keys:
        row[key] = _number(run.get(f"params.{key}.name" if key in GROUPS else f"params.{key}"))
    row[ERROR] = _short(run.get(f"tags.{ERROR_TAG}"))
    return row


def varying_config_keys(runs: pd.DataFrame) -> list[str]:
    """The config keys whose values differ between the runs: what tells them apart."""
    keys = []
    for column in sorted(c for c in runs.columns if c.startswith("params.")):
        key = column.removeprefix("params.")
        if key.startswith(NOT_CONFIG) or runs[column].nunique() < 2:  # among the runs that have it
            continue
        group, _, rest = key.partition(".")
        keys.append(group if group in GROUPS and rest == "name" else key)
    return keys


def search_space_targets(parent_run_id: str) -> dict[str, str]:
    """{Optuna param name: config key} from the search space the study logged."""
    try:
        with tempfile.TemporaryDirectory(prefix="study-report-") as scratch:
            path = mlflow.artifacts.download_artifacts(
                run_id=parent_run_id, artifact_path="search_space.yaml", dst_path=scratch
            )
            return space_targets(load_logged_config(path))
    except Exception:  # an older study or a missing artifact: params keep their own names
        return {}


def load_study(name: str, storage: str | None) -> optuna.Study | None:
    if not storage:
        return None
    try:
        if missing_local_store(storage):  # Optuna would create an empty store there
            raise FileNotFoundError(storage)
        return optuna.load_study(study_name=name, storage=storage)
    except Exception as error:  # storage gone, moved or masked: MLflow alone still gives a table
        hint = " (its password is masked in MLflow: pass --storage)" if "***" in storage else ""
        print(
            f"study.report: warning: Optuna study {name} not loaded from {mask_secrets(storage)}{hint}: "
            f"{type(error).__name__}; states and values come from MLflow",
            file=sys.stderr,
        )
        return None


def _value(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _number(value):
    """MLflow params are strings: "0.01" -> 0.01, "cnn" stays."""
    if not isinstance(value, str):
        return _value(value)
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _short(error) -> str:
    if not isinstance(error, str) or not error.strip():
        return ""
    first = error.strip().splitlines()[0]
    return first if len(first) <= ERROR_LENGTH else first[: ERROR_LENGTH - 3] + "..."
