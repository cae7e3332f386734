"""Sampler registry: config group option -> Optuna sampler."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import optuna
from omegaconf import DictConfig

from study.config import ConfigError
from study.search_space import SearchSpace


def _seed(cfg: DictConfig, offset: int) -> int | None:
    # Each worker gets its own stream; otherwise parallel workers would sample the same points.
    return None if cfg.seed is None else cfg.seed + offset


def _tpe(cfg: DictConfig, space: SearchSpace, offset: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(
        seed=_seed(cfg, offset),
        n_startup_trials=cfg.n_startup_trials,
        multivariate=cfg.multivariate,
        group=cfg.group,
        constant_liar=cfg.constant_liar,
    )


def _gp(cfg: DictConfig, space: SearchSpace, offset: int) -> optuna.samplers.BaseSampler:
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("sampler=gp: needs PyTorch, which is not installed (pip install torch)")
    return optuna.samplers.GPSampler(seed=_seed(cfg, offset), n_startup_trials=cfg.n_startup_trials)


SAMPLERS: dict[str, Callable[[DictConfig, SearchSpace, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda cfg, space, offset: optuna.samplers.RandomSampler(seed=_seed(cfg, offset)),
    "grid": lambda cfg, space, offset: optuna.samplers.GridSampler(space.grid(), seed=cfg.seed),
    "cmaes": lambda cfg, space, offset: optuna.samplers.CmaEsSampler(
        seed=_seed(cfg, offset), n_startup_trials=cfg.n_startup_trials, warn_independent_sampling=False
    ),
    "gp": _gp,
}


def build_sampler(cfg: DictConfig, space: SearchSpace, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    return SAMPLERS[cfg.name](cfg, space, worker_index)
