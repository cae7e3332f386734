"""Reproduce a tracked run by id: `python -m study.reproduce RUN_ID [--seeds N]`.

The run's logged `config.yaml` is replayed in a fresh process with the documented command
(`python -m study.train --config-path DIR --config-name config`), into a new run tagged
`reproduction_of`, with the original's Keras backend, CPU threads and cores restored in that
process (the tags say which; a trial of a multi-worker study had its share of the cores). The
original and reproduced metrics are printed side by side; the command exits 1 when they differ
by more than `--tolerance`. Before training it refuses, unless `--force`, when the data, the
package versions, the device kind or an explicit KERAS_BACKEND differ from the original's.

`--seeds N` instead re-trains the config with N other seeds and logs the mean and standard
deviation of validation and test accuracy on the original run: a good config or a lucky seed?
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from study.core.cli import at_least_zero
from study.core.errors import ConfigError, error_line
from study.core.masking import mask_console, mask_secrets, private_files
from study.core.names import DEFAULT_TRACKING_URI, REPRODUCTION_OF_TAG
from study.tracking import missing_local_store
from study.training import replay
from study.training.backend import restored

EXIT_DIFFERENT = 1
EXIT_REFUSED = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", help="the MLflow run to reproduce (a single run or a trial of a study)")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument(
        "--tolerance",
        type=at_least_zero(float),
        default=0.0,
        help="largest allowed absolute difference of a metric (default 0: a CPU run is deterministic)",
    )
    parser.add_argument(
        "--force", action="store_true", help="go on when the data digest or the package versions differ"
    )
    parser.add_argument(
        "--seeds",
        type=at_least_zero(int),
        default=0,
        help="re-train with this many other seeds and report mean and std",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # errors stay one line
    args = parse_args(argv)
    where = mask_secrets(args.tracking_uri)
    missing = missing_local_store(args.tracking_uri)
    if missing is not None:  # MLflow would create an empty store there
        return refuse(f"--tracking-uri {where}: no MLflow store at {missing}")
    client = MlflowClient(tracking_uri=args.tracking_uri)
    try:
        original = client.get_run(args.run_id)
    except Exception as error:  # no such run, or a store that cannot be read
        return refuse(f"run {args.run_id}: not found in {where} ({error_line(error)})")
    if original.info.lifecycle_stage == "deleted":
        return refuse(f"run {args.run_id}: deleted in {where} (mlflow runs restore --run-id {args.run_id})")
    with tempfile.TemporaryDirectory(prefix="study-reproduce-") as scratch:
        try:
            cfg, source_problem = replay.logged_config(client, original, Path(scratch), args.force)
        except ConfigError as error:
            return refuse(str(error))
        cfg = replay.with_tracking_uri(cfg, args.tracking_uri)
        setup = restored(original.info.run_id, original.data.tags)  # what else decides its numbers
        problems = [*([source_problem] if source_problem else []), *setup.problems]
        if not args.seeds:  # other seeds measure a spread: the same data is not asked of them
            problems += replay.differences_before_training(original, cfg)
        if problems and not args.force:
            return refuse("; ".join(problems) + "; pass --force to reproduce anyway")
        for problem in problems + (setup.notes if not args.seeds else []):
            logging.getLogger(__name__).warning("the numbers may differ: %s", problem)
        if args.seeds:
            return replay.seed_variance(client, original, cfg, args.seeds, Path(scratch), setup)
        tags = {REPRODUCTION_OF_TAG: original.info.run_id}
        reproduced = replay.replay(client, cfg, tags, Path(scratch), setup)
    same = replay.judged(client, original, reproduced, args.tolerance, [*problems, *setup.notes])
    return 0 if same else EXIT_DIFFERENT


def refuse(message: str) -> int:
    print(f"study.reproduce: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


if __name__ == "__main__":
    mask_console()  # also tracebacks that quote a URL
    private_files()  # its reports and scratch files are the owner's alone
    sys.exit(main())
