"""Leaderboards from the tracking store: `python -m study.report`.

    python -m study.report --study default                 # one study's trials
    python -m study.report --study cnn-lr --study default  # two studies side by side
    python -m study.report --experiment study --markdown   # every run of an experiment

Runs come from `mlflow.search_runs`; a study's trial states, values and sampled params from
its Optuna storage (the one the study's parent run logged, or --storage). The table is
printed and written as CSV (and Markdown with --markdown) under --output-dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from study.reproduce import DEFAULT_TRACKING_URI
from study.storage import MLFLOW_RUN_ATTR, trial_score
from study.tracking import mask_secrets

RUN_COLUMNS = {
    "tags.mlflow.runName": "run_name",
    "status": "status",
    "params.model.name": "model",
    "params.optimizer.name": "optimizer",
    "params.optimizer.learning_rate": "learning_rate",
    "params.model.dropout_rate": "dropout_rate",
    "params.data.name": "data",
    "metrics.best_val_accuracy": "val_accuracy",
    "metrics.test_accuracy": "test_accuracy",
    "duration_s": "duration_s",
    "run_id": "run_id",
}


class ReportError(ValueError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--study", action="append", help="a study name (repeat to compare studies)")
    target.add_argument("--experiment", help="an MLflow experiment name: every run in it")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    parser.add_argument("--storage", help="Optuna storage URL (default: the one the study logged)")
    parser.add_argument("--output-dir", default="runs/reports", help="where the CSV and Markdown go")
    parser.add_argument("--markdown", action="store_true", help="also write a Markdown table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        if args.study:
            table = pd.concat([study_table(name, args.storage) for name in args.study], ignore_index=True)
            name = "_vs_".join(args.study)
        else:
            table = experiment_table(args.experiment)
            name = args.experiment
    except ReportError as error:
        print(f"study.report: error: {error}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_rows", 500):
        print(table.to_string(index=False))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / f"{name}.csv", index=False)
    written = [output / f"{name}.csv"]
    if args.markdown:
        (output / f"{name}.md").write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
        written.append(output / f"{name}.md")
    print("written: " + ", ".join(str(path) for path in written))
    return 0


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
    table = pick(runs, RUN_COLUMNS)
    return table.sort_values("val_accuracy", ascending=False, na_position="last").reset_index(drop=True)


def study_table(name: str, storage: str | None) -> pd.DataFrame:
    parent = find_parent(name)
    experiment = mlflow.get_experiment(parent["experiment_id"]).name
    children = runs_frame(experiment, f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    table = pick(
        children, {**RUN_COLUMNS, "tags.optuna.trial.number": "trial", "tags.optuna.trial.state": "state"}
    )
    table["trial"] = pd.to_numeric(table["trial"])
    winner = parent.get("tags.best_trial_run_id")
    if isinstance(winner, str) and winner:  # the one test-set evaluation of the study
        table.loc[table["run_id"] == winner, "test_accuracy"] = parent.get("metrics.best_trial_test_accuracy")
    table = table.merge(
        optuna_trials(name, storage or parent.get("params.study.storage")), on="run_id", how="left"
    )
    table.insert(0, "study", name)
    table["val_accuracy"] = table["optuna_value"].fillna(table["val_accuracy"])
    table["state"] = table["optuna_state"].fillna(table["state"])
    table = table.drop(columns=["optuna_value", "optuna_state"])
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2}
    table["_order"] = table["state"].map(lambda state: order.get(state, 3))
    table = table.sort_values(["_order", "val_accuracy"], ascending=[True, False]).drop(columns="_order")
    return table.reset_index(drop=True)


def find_parent(name: str) -> pd.Series:
    parents = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`study.name` = '{name}' and tags.`study.role` = 'parent'",
        output_format="pandas",
    )
    if parents.empty:
        raise ReportError(
            f"--study {name}: no study of that name in {mask_secrets(mlflow.get_tracking_uri())}"
        )
    return parents.iloc[0]  # the newest, when a name was reused with a new storage


def optuna_trials(name: str, storage: str | None) -> pd.DataFrame:
    """State, value and sampled params of each trial, keyed by MLflow run id."""
    columns = ["run_id", "optuna_state", "optuna_value"]
    if not storage:
        return pd.DataFrame(columns=columns)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception as error:  # storage gone, moved or masked: MLflow alone still gives a table
        hint = " (its password is masked in MLflow: pass --storage)" if "***" in storage else ""
        print(
            f"study.report: warning: Optuna study {name} not loaded from {mask_secrets(storage)}{hint}: "
            f"{type(error).__name__}; states and values come from MLflow",
            file=sys.stderr,
        )
        return pd.DataFrame(columns=columns)
    rows: dict[str, dict] = {}
    for trial in study.get_trials(deepcopy=False):
        if MLFLOW_RUN_ATTR not in trial.user_attrs:
            continue
        run_id = trial.user_attrs[MLFLOW_RUN_ATTR]
        earlier = rows.get(run_id)
        if earlier is not None and earlier["optuna_state"] == "COMPLETE" and trial.state.name != "COMPLETE":
            continue  # scheduler=asha: a run spans its configuration's trials; the last complete one speaks
        rows[run_id] = {
            "run_id": run_id,
            "optuna_state": trial.state.name,
            "optuna_value": trial_score(trial),
            **{f"param.{key}": param for key, param in trial.params.items()},
        }
    return pd.DataFrame(list(rows.values()), columns=None if rows else columns)


def pick(runs: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The named columns of a search_runs frame, renamed; missing ones are empty."""
    picked = pd.DataFrame(
        {new: runs[old] if old in runs else pd.Series(dtype=object) for old, new in columns.items()}
    )
    for column in ("val_accuracy", "test_accuracy", "learning_rate", "dropout_rate"):
        picked[column] = pd.to_numeric(picked[column], errors="coerce")
    return picked


if __name__ == "__main__":
    sys.exit(main())
