"""`python -m study.sweep [overrides]`: an Optuna study of tracked training runs."""

from __future__ import annotations

import os
import sys

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from study.config import CONFIG_DIR
from study.core.cli import report_input_errors, run_cli
from study.core.retry import StoreUnreachableError
from study.execution import StudyIncompleteError, run_sweep


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
@report_input_errors
def main(cfg: DictConfig) -> float | None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    config_dir, overrides = worker_composition(HydraConfig.get())
    try:
        summary = run_sweep(cfg, overrides, config_dir, HydraConfig.get().job.config_name)
    # The parent run says FAILED (or a store went away before there was one): one line.
    except (StudyIncompleteError, StoreUnreachableError) as error:
        print(f"study.sweep: error: {error}", file=sys.stderr)
        sys.exit(1)
    return summary.get("best_val_accuracy")


def worker_composition(hydra_cfg) -> tuple[str, list[str]]:
    """(primary config folder, overrides) from which workers compose the same config: the task
    overrides and every extra config folder (hydra.searchpath, --config-dir), as one search path."""
    config_dir = next(
        (s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main"), str(CONFIG_DIR)
    )
    extra = [
        f"{source.schema}://{source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider not in ("main", "hydra", "schema") and source.schema in ("file", "pkg")
    ]
    search_path = [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []
    return config_dir.removeprefix("file://"), [*search_path, *hydra_cfg.overrides.task]


if __name__ == "__main__":
    run_cli(main)
