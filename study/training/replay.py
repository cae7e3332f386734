"""Replaying a tracked run, for `python -m study.reproduce`: the run's config.yaml trained again
in a fresh process with the documented command, the two runs' metrics side by side, the checks
made before training (data digest, package versions), and re-training with other seeds."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
    REPRODUCED_BY_TAG,
    REPRODUCTION_DIFF_TAG,
    SEED_VARIANCE_OF_TAG,
    SEED_VARIANCE_PREFIX,
    SEED_VARIANCE_SEED_TAG,
    VERSION_TAG_PREFIX,
)
from study.tracking.lineage import package_versions
from study.tracking.runs import RunTracker
from study.training.backend import Restored
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


def replay(
    client: MlflowClient, cfg: DictConfig, tags: dict[str, str], folder: Path, setup: Restored | None = None
) -> Run:
    """Train `cfg` in a fresh process with the documented replay command; returns the new run.
    `setup`: the original run's backend, threads and cores, restored in that process before
    Keras starts (None: this process's environment)."""
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
    done = subprocess.run(command, check=False, **(setup.popen_arguments() if setup else {}))
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


def judged(client: MlflowClient, original: Run, reproduced: Run, tolerance: float, notes: list[str]) -> bool:
    """Print both runs' metrics side by side and the verdict, tag both runs, and say whether
    they agree within `tolerance`. A difference the `notes` foresaw (what the replay could not
    restore, or was forced past) is said so under the verdict: not a bug to look for."""
    table = compare(client, original, reproduced)
    print(table.to_string(index=False))
    worst = float(table["abs_diff"].max()) if len(table) else 0.0
    same = worst <= tolerance
    # log_batch: two reproductions of one run may tag it at once (see RunTracker.set_tags).
    RunTracker(client, original.info.run_id).set_tags({REPRODUCED_BY_TAG: reproduced.info.run_id})
    RunTracker(client, reproduced.info.run_id).set_tags({REPRODUCTION_DIFF_TAG: repr(worst)})
    verdict = "reproduced" if same else f"NOT reproduced (tolerance {tolerance})"
    print(f"{verdict}: largest difference {worst:.3g}, new run {reproduced.info.run_id}")
    if not same and notes:
        print(f"not expected to be exact: {'; '.join(notes)}")
    return same


@dataclass(frozen=True)
class SeedRun:
    """One re-training of a config with another seed: its run and final metrics."""

    seed: int
    run_id: str
    metrics: Mapping[str, float]


# Trains one config (its seed already set) and returns (run id, final metrics).
TrainOne = Callable[[DictConfig, int], tuple[str, Mapping[str, float]]]


def other_seeds(cfg: DictConfig, n_seeds: int) -> list[int]:
    """trainer.seed + 1 ... + n_seeds: `study.reproduce --seeds` and a study's confirmation
    (study.confirm_seeds) train the same seeds, so their runs compare."""
    return [cfg.trainer.seed + offset for offset in range(1, n_seeds + 1)]


def train_seeds(cfg: DictConfig, seeds: Iterable[int], train_one: TrainOne) -> list[SeedRun]:
    """`cfg` trained again with each of `seeds` (trainer.seed, which also draws the validation
    split): how much of a score is the config's and how much its seed's. `train_one` says how
    and where: a replay in a fresh process (`seed_variance`), or a run of a study's driver."""
    runs = []
    for seed in seeds:
        plain = OmegaConf.to_container(cfg)
        plain["trainer"]["seed"] = seed
        run_id, metrics = train_one(OmegaConf.create(plain), seed)
        runs.append(SeedRun(seed, run_id, dict(metrics)))
    return runs


def mean_and_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1: estimated from a few seeds); 0 for one value."""
    values = np.asarray(list(values), dtype=float)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def seed_variance(
    client: MlflowClient,
    original: Run,
    cfg: DictConfig,
    n_seeds: int,
    folder: Path,
    setup: Restored | None = None,
) -> int:
    """Re-train with `n_seeds` other seeds; log mean and std of the accuracies on the original.
    `setup`: as `replay`'s, so that only the seed differs from the original."""

    def replayed(seeded: DictConfig, seed: int) -> tuple[str, Mapping[str, float]]:
        tags = {SEED_VARIANCE_OF_TAG: original.info.run_id, SEED_VARIANCE_SEED_TAG: str(seed)}
        run = replay(client, seeded, tags, folder, setup)
        return run.info.run_id, run.data.metrics

    rows = [
        {
            "seed": run.seed,
            "best_val_accuracy": run.metrics.get("best_val_accuracy"),
            "test_accuracy": run.metrics.get("test_accuracy"),
            "run_id": run.run_id,
        }
        for run in train_seeds(cfg, other_seeds(cfg, n_seeds), replayed)
    ]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    summary = {}
    for key in ("best_val_accuracy", "test_accuracy"):
        values = table[key].to_numpy(dtype=float)
        mean, std = mean_and_std(values)
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
