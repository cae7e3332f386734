"""`python -m study.train [overrides]`: one tracked training run."""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from study.core.cli import report_input_errors, run_cli
from study.training import train
from study.training.replay_config import replay_hydra_overrides

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_input_errors
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    log.info("test_accuracy %.4f", metrics["test_accuracy"])
    return metrics["best_val_accuracy"]


if __name__ == "__main__":
    run_cli(main, replay_overrides=replay_hydra_overrides())
