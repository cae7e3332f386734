"""Sampler registry: config group option -> Optuna sampler; and, for scheduler=asha, the
wrapper that makes a model-based sampler learn from one rung's results."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Container
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from study.core.errors import ConfigError
from study.search.asha import is_promotion, sampler_view
from study.search.space import SearchSpace
from study.search.startup import for_startup
from study.search.wrapped import WrappedSampler


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
    sampler = SAMPLERS[cfg.name](cfg, space, worker_index)
    if "startup" not in cfg:
        return sampler
    # The same sequence in every worker (no worker offset): they share one spread.
    return for_startup(sampler, cfg.startup, cfg.n_startup_trials, space.distributions(), cfg.seed)


MODEL_BASED = ("tpe", "gp", "cmaes")  # samplers that learn from results (they have n_startup_trials)


def for_scheduler(sampler: optuna.samplers.BaseSampler, settings: DictConfig) -> optuna.samplers.BaseSampler:
    """The sampler a study's workers use: with scheduler=asha, a model-based sampler learns from
    every configuration, ranked by how far ASHA took it (`RungSampler`); otherwise it is used
    as it is."""
    if settings.scheduler.name != "asha" or settings.sampler.name not in MODEL_BASED:
        return sampler
    return RungSampler(sampler)


class RungSampler(WrappedSampler):
    """A sampler that knows about budgets.

    Under scheduler=asha a configuration has one trial per rung, valued at that rung's budget:
    TPE fitted on all of them would mix results of different budgets and count a promoted
    configuration several times. This wrapper shows the wrapped sampler the study as if it held
    one trial per configuration, valued by the rungs it reached, then its value at the highest
    (`sampler_view`), plus the first segments still running (for the constant liar).
    Promotions have fixed params and ask the wrapped sampler for nothing.
    """

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if is_promotion(trial):
            return {}
        return self.sampler.infer_relative_search_space(RungView(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if is_promotion(trial) or not search_space:
            return {}
        return self.sampler.sample_relative(RungView(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        view = RungView(study)
        return self.sampler.sample_independent(view, trial, param_name, param_distribution)


class RungView:
    """A study that lists only the trials `sampler_view` picks; everything else is the study's."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=False, use_cache=use_cache)
        picked = [t for t in sampler_view(trials) if states is None or t.state in states]
        return copy.deepcopy(picked) if deepcopy else picked

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()
