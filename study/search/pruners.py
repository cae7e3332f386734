"""Pruner registry: config group option -> Optuna pruner. Steps are epochs."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from omegaconf import DictConfig

PRUNERS: dict[str, Callable[[DictConfig], optuna.pruners.BasePruner]] = {
    "median": lambda cfg: optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials,
        n_warmup_steps=cfg.n_warmup_steps,
        interval_steps=cfg.interval_steps,
    ),
    "hyperband": lambda cfg: optuna.pruners.HyperbandPruner(
        min_resource=cfg.min_resource, max_resource=cfg.max_resource, reduction_factor=cfg.reduction_factor
    ),
    "successive_halving": lambda cfg: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=cfg.min_resource,
        reduction_factor=cfg.reduction_factor,
        min_early_stopping_rate=cfg.min_early_stopping_rate,
    ),
    "threshold": lambda cfg: optuna.pruners.ThresholdPruner(
        lower=cfg.lower, upper=cfg.upper, n_warmup_steps=cfg.n_warmup_steps
    ),
    "none": lambda cfg: optuna.pruners.NopPruner(),
}


def build_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    return PRUNERS[cfg.name](cfg)
