"""Reproduce a tracked run by id: `python -m study.reproduce RUN_ID [--seeds N]`.

The run's logged `config.yaml` is replayed in a fresh process with the documented command
(`python -m study.train --config-path DIR --config-name config`), into a new run tagged
`reproduction_of`. The original and reproduced metrics are printed side by side; the
command exits 1 when they differ by more than `--tolerance`. Before training it refuses,
unless `--force`, when the data or the package versions differ from the original's.

`--seeds N` instead re-trains the config with N other seeds and logs the mean and standard
deviation of validation and test accuracy on the original run: a good config or a lucky seed?
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from study.backend import package_versions
from study.config import ConfigError, checked_config, describe_yaml_error
from study.data import load_dataset
from study.tracking import RunTracker, error_line, mask_secrets, missing_local_store

log = logging.getLogger(__name__)

COMPARED_PER_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
COMPARED_FINAL = ("best_val_accuracy", "test_loss", "test_accuracy")
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
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
        type=float,
        default=0.0,
        help="largest allowed absolute difference of a metric (default 0: a CPU run is deterministic)",
    )
    parser.add_argument(
        "--force", action="store_true", help="go on when the data digest or the package versions differ"
    )
    parser.add_argument(
        "--seeds", type=int, default=0, help="re-train with this many other seeds and report mean and std"
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
    with tempfile.TemporaryDirectory(prefix="study-reproduce-") as scratch:
        try:
            config_file = Path(client.download_artifacts(args.run_id, "config.yaml", scratch))
            cfg = checked_config(OmegaConf.load(config_file))
        except (MlflowException, OSError) as error:
            return refuse(f"run {args.run_id}: has no readable config.yaml artifact ({error_line(error)})")
        except yaml.YAMLError as error:
            where = describe_yaml_error(error).replace(str(Path(scratch) / "config.yaml"), "config.yaml")
            return refuse(f"run {args.run_id}: {where}")
        except ConfigError as error:
            return refuse(f"run {args.run_id}: config.yaml: {error}")
        cfg = with_tracking_uri(cfg, args.tracking_uri)
        if args.seeds:
            return seed_variance(client, original, cfg, args.seeds, Path(scratch))
        problems = differences_before_training(original, cfg)
        if problems and not args.force:
            return refuse("; ".join(problems) + "; pass --force to reproduce anyway")
        for problem in problems:
            log.warning("going on despite: %s", problem)
        reproduced = replay(client, cfg, {"reproduction_of": original.info.run_id}, Path(scratch))
    table = compare(client, original, reproduced)
    print(table.to_string(index=False))
    worst = float(table["abs_diff"].max()) if len(table) else 0.0
    same = worst <= args.tolerance
    # log_batch: two reproductions of one run may tag it at once (see RunTracker.set_tags).
    RunTracker(client, original.info.run_id).set_tags({"reproduced_by": reproduced.info.run_id})
    RunTracker(client, reproduced.info.run_id).set_tags({"reproduction.max_abs_diff": repr(worst)})
    verdict = "reproduced" if same else f"NOT reproduced (tolerance {args.tolerance})"
    print(f"{verdict}: largest difference {worst:.3g}, new run {reproduced.info.run_id}")
    return 0 if same else EXIT_DIFFERENT


def refuse(message: str) -> int:
    print(f"study.reproduce: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def with_tracking_uri(cfg: DictConfig, tracking_uri: str) -> DictConfig:
    """The reproduction is logged where the original was looked up."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tracking_uri"] = tracking_uri
    return OmegaConf.create(plain)


def differences_before_training(original: Run, cfg: DictConfig) -> list[str]:
    """What differs from the original's data and software, found without training."""
    problems = []
    logged_digest = original.data.tags.get("data.digest")
    digest = load_dataset(cfg.data, cfg.trainer.seed).digest
    if logged_digest and logged_digest != digest:
        problems.append(
            f"the data differ from the original run's (data.digest {digest} != logged {logged_digest}, "
            f"data.path={cfg.data.path})"
        )
    current = package_versions()
    changed = [
        f"{name} {current[name]} != logged {value}"
        for key, value in original.data.tags.items()
        if key.startswith("versions.") and (name := key.removeprefix("versions.")) in current
        if current[name] != value
    ]
    if changed:
        problems.append("package versions differ: " + ", ".join(sorted(changed)))
    return problems


def replay(client: MlflowClient, cfg: DictConfig, tags: dict[str, str], folder: Path) -> Run:
    """Train `cfg` in a fresh process with the documented replay command; returns the new run."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tags"] = {**plain["mlflow"].get("tags", {}), **tags}
    # Hydra's own output folder under runs/, as for the original run, not outputs/ in the cwd.
    plain["hydra"] = {"run": {"dir": "${runs_dir}/hydra/train/${now:%Y-%m-%d_%H-%M-%S}"}}
    replay_dir = Path(tempfile.mkdtemp(dir=folder))
    (replay_dir / "config.yaml").write_text(OmegaConf.to_yaml(plain))
    command = [
        sys.executable,
        "-m",
        "study.train",
        "--config-path",
        str(replay_dir),
        "--config-name",
        "config",
    ]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise SystemExit(f"study.reproduce: error: the replay failed (exit {done.returncode})")
    key, value = next(iter(tags.items()))
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{key} = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def compare(client: MlflowClient, original: Run, reproduced: Run) -> pd.DataFrame:
    """Side by side: every per-epoch and final metric both runs have."""
    rows = []
    for key in COMPARED_PER_EPOCH:
        before = {m.step: m.value for m in client.get_metric_history(original.info.run_id, key)}
        after = {m.step: m.value for m in client.get_metric_history(reproduced.info.run_id, key)}
        rows += [(key, step, before[step], after[step]) for step in sorted(before.keys() & after.keys())]
    for key in COMPARED_FINAL:
        if key in original.data.metrics and key in reproduced.data.metrics:
            rows.append((key, "final", original.data.metrics[key], reproduced.data.metrics[key]))
    table = pd.DataFrame(rows, columns=["metric", "epoch", "original", "reproduced"])
    table["abs_diff"] = (table["original"] - table["reproduced"]).abs()
    return table


def seed_variance(client: MlflowClient, original: Run, cfg: DictConfig, n_seeds: int, folder: Path) -> int:
    """Re-train with `n_seeds` other seeds; log mean and std of the accuracies on the original."""
    rows = []
    for offset in range(1, n_seeds + 1):
        plain = OmegaConf.to_container(cfg)
        plain["trainer"]["seed"] = cfg.trainer.seed + offset
        run = replay(
            client,
            OmegaConf.create(plain),
            {"seed_variance_of": original.info.run_id, "seed_variance.seed": str(plain["trainer"]["seed"])},
            folder,
        )
        rows.append(
            {
                "seed": plain["trainer"]["seed"],
                "best_val_accuracy": run.data.metrics.get("best_val_accuracy"),
                "test_accuracy": run.data.metrics.get("test_accuracy"),
                "run_id": run.info.run_id,
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    summary = {}
    for key in ("best_val_accuracy", "test_accuracy"):
        values = table[key].to_numpy(dtype=float)
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[f"seed_variance.{key}.mean"], summary[f"seed_variance.{key}.std"] = mean, std
        print(f"{key}: mean {mean:.4f}, std {std:.4f} over {len(values)} seeds")
    summary["seed_variance.n_seeds"] = float(n_seeds)
    tracker = RunTracker(client, original.info.run_id)
    tracker.log_metrics(summary)
    tracker.flush()
    table_file = folder / "seed_variance.csv"
    table.to_csv(table_file, index=False)
    tracker.log_artifact(table_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
