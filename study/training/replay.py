"""Replaying a tracked run, for `python -m study.reproduce`: the run's config.yaml trained again
in a fresh process with the documented command, the two runs' metrics side by side, the checks
made before training (data digest, package versions), and re-training with other seeds."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from study.config.checks import checked_config
from study.config.probes import builder_source_digest
from study.core.config_files import load_logged_config
from study.core.errors import ConfigError, error_line
from study.core.names import (
    DATA_DIGEST_TAG,
    MODEL_SOURCE_TAG,
    SEED_VARIANCE_OF_TAG,
    SEED_VARIANCE_PREFIX,
    SEED_VARIANCE_SEED_TAG,
    VERSION_TAG_PREFIX,
)
from study.tracking.lineage import package_versions
from study.tracking.runs import RunTracker
from study.training.data import load_dataset

log = logging.getLogger(__name__)

COMPARED_PER_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
COMPARED_FINAL = ("best_val_accuracy", "test_loss", "test_accuracy")


def with_tracking_uri(cfg: DictConfig, tracking_uri: str) -> DictConfig:
    """The reproduction is logged where the original was looked up."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tracking_uri"] = tracking_uri
    return OmegaConf.create(plain)


def logged_config(
    client: MlflowClient, original: Run, folder: Path, force: bool
) -> tuple[DictConfig, str | None]:
    """The run's config.yaml, checked, and what is wrong with its model's source (refused
    unless `force`, before any of the module's code runs); any problem is a one-line ConfigError."""
    run_id = original.info.run_id
    try:
        config_file = Path(client.download_artifacts(run_id, "config.yaml", str(folder)))
    except (MlflowException, OSError) as error:
        raise ConfigError(
            f"run {run_id}: has no readable config.yaml artifact ({error_line(error)})"
        ) from None
    try:  # data: bounded YAML, no hydra: block, no resolver calls (${oc.env:...})
        logged = load_logged_config(config_file, name="config.yaml")
    except ConfigError as error:
        raise ConfigError(f"run {run_id}: {error}") from None
    source_problem = model_source_problem(original, logged)
    if source_problem and not force:
        raise ConfigError(f"{source_problem}; pass --force to reproduce anyway")
    try:
        return checked_config(logged), source_problem
    except ConfigError as error:
        raise ConfigError(f"run {run_id}: config.yaml: {error}") from None


def model_source_problem(original: Run, config: DictConfig) -> str | None:
    """A logged config that names a model builder is replayed only when the builder's module is
    the one the original run logged (checked before the module runs: a config is data)."""
    builder = OmegaConf.select(config, "model.builder", default=None)
    if builder is None:
        return None
    logged, current = original.data.tags.get(MODEL_SOURCE_TAG), builder_source_digest(str(builder))
    if logged == current:
        return None
    return (
        f"the model's module changed since the original run (model.builder={builder}, "
        f"{MODEL_SOURCE_TAG} {current or 'not found'} != logged {logged or 'none'})"
    )


def differences_before_training(original: Run, cfg: DictConfig) -> list[str]:
    """What differs from the original's data and software, found without training."""
    problems = []
    logged_digest = original.data.tags.get(DATA_DIGEST_TAG)
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
        if key.startswith(VERSION_TAG_PREFIX) and (name := key.removeprefix(VERSION_TAG_PREFIX)) in current
        if current[name] != value
    ]
    if changed:
        problems.append("package versions differ: " + ", ".join(sorted(changed)))
    return problems


def replay(client: MlflowClient, cfg: DictConfig, tags: dict[str, str], folder: Path) -> Run:
    """Train `cfg` in a fresh process with the documented replay command; returns the new run."""
    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tags"] = {**plain["mlflow"].get("tags", {}), **tags}
    # No hydra: block; study.train keeps Hydra's output folder under runs/ for a --config-path.
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
            {
                SEED_VARIANCE_OF_TAG: original.info.run_id,
                SEED_VARIANCE_SEED_TAG: str(plain["trainer"]["seed"]),
            },
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
        summary[f"{SEED_VARIANCE_PREFIX}{key}.mean"], summary[f"{SEED_VARIANCE_PREFIX}{key}.std"] = mean, std
        print(f"{key}: mean {mean:.4f}, std {std:.4f} over {len(values)} seeds")
    summary[f"{SEED_VARIANCE_PREFIX}n_seeds"] = float(n_seeds)
    tracker = RunTracker(client, original.info.run_id)
    tracker.log_metrics(summary)
    tracker.flush()
    table_file = folder / "seed_variance.csv"
    table.to_csv(table_file, index=False)
    tracker.log_artifact(table_file)
    return 0
