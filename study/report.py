"""Leaderboards from the tracking store: `python -m study.report`.

    python -m study.report --study default                 # one study's trials
    python -m study.report --study asha --all-rungs        # scheduler=asha: every rung's trial
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
import pandas as pd

from study.core.errors import ConfigError
from study.core.masking import mask_console, mask_secrets, private_files
from study.core.names import DEFAULT_TRACKING_URI
from study.reporting.tables import ReportError, experiment_table, report_file, study_table
from study.tracking import check_readable, missing_local_store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--study", action="append", help="a study name (repeat to compare studies)")
    target.add_argument("--experiment", help="an MLflow experiment name: every run in it")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    parser.add_argument("--storage", help="Optuna storage URL (default: the one the study logged)")
    parser.add_argument("--output-dir", default="runs/reports", help="where the CSV and Markdown go")
    parser.add_argument("--markdown", action="store_true", help="also write a Markdown table")
    parser.add_argument(
        "--all-rungs",
        action="store_true",
        help="scheduler=asha: a row per trial (rung), not per configuration",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for option, uri in (("--tracking-uri", args.tracking_uri), ("--storage", args.storage)):
        missing = missing_local_store(uri) if uri else None
        if missing is not None:  # MLflow and Optuna would create an empty store there
            print(f"study.report: error: {option} {mask_secrets(uri)}: nothing at {missing}", file=sys.stderr)
            return 2

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        check_readable(args.tracking_uri, "--tracking-uri")
        if args.study:
            table = pd.concat(
                [study_table(name, args.storage, args.all_rungs) for name in args.study], ignore_index=True
            )
            name = "_vs_".join(args.study)
        else:
            table = experiment_table(args.experiment)
            name = args.experiment
    except (ReportError, ConfigError) as error:
        print(f"study.report: error: {error}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_rows", 500):
        print(table.to_string(index=False, na_rep=""))
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    written = [report_file(args.output_dir, name, ".csv")]  # under --output-dir, whatever the name
    table.to_csv(written[0], index=False)
    if args.markdown:
        written.append(report_file(args.output_dir, name, ".md"))
        written[1].write_text(table.to_markdown(index=False) + "\n")
    print("written: " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    mask_console()  # also tracebacks that quote a URL
    private_files()  # its reports and scratch files are the owner's alone
    sys.exit(main())
