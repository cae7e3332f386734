"""The first configurations of a model-based sampler, spread over the space on purpose.

TPE, GP and CMA-ES sample their first `n_startup_trials` configurations at random. A handful
of random points often clumps: two softmax models and a CNN with a learning rate two decades
off, say, and the sampler's model then learns from those. `sampler.startup=stratified` takes
the first configurations from one scrambled Sobol sequence over the whole space (SciPy's
`stats.qmc.Sobol`, as Optuna's QMCSampler does) instead: every categorical choice and every
part of each range gets its share among the first few, whatever the seed. From then on the
wrapped sampler decides as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from study.search.asha import is_promotion
from study.search.wrapped import WrappedSampler


def for_startup(
    sampler: optuna.samplers.BaseSampler,
    startup: str,
    n_startup_trials: int,
    distributions: dict[str, BaseDistribution],
    seed: int | None,
) -> optuna.samplers.BaseSampler:
    """`sampler` as it is with `startup=random`, else its first configurations stratified."""
    if startup == "random" or n_startup_trials == 0 or not distributions:
        return sampler
    return StratifiedStart(sampler, n_startup_trials, distributions, seed)


class StratifiedStart(WrappedSampler):
    """The first `n_startup_trials` configurations of a study (in trial-number order, promotions
    of scheduler=asha left out) are points 0, 1, ... of one Sobol sequence, the same in every
    worker: each worker's trials take the points their numbers give them, so parallel workers
    share one spread instead of drawing a clump each."""

    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        n_startup_trials: int,
        distributions: dict[str, BaseDistribution],
        seed: int | None,
    ):
        from scipy.stats import qmc  # SciPy comes with scikit-learn and Optuna's QMCSampler

        super().__init__(sampler)
        self.dimensions = {name: index for index, name in enumerate(distributions)}
        sobol = qmc.Sobol(d=len(distributions), scramble=True, seed=seed)
        self.points = sobol.random_base2(max(0, math.ceil(math.log2(n_startup_trials))))[:n_startup_trials]
        self.places: dict[int, int] = {}  # trial id -> its point (a startup configuration's)
        self.started = False  # every point taken: later trials have later numbers, no count needed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.places.clear()  # a worker runs one trial at a time: the last one has ended
        if not self.started and not is_promotion(trial):
            place = configurations_before(study, trial)
            if place < len(self.points):
                self.places[trial._trial_id] = place
            else:
                self.started = True
        super().before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if trial._trial_id in self.places:
            return {}
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial._trial_id in self.places:
            return {}
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        place = self.places.get(trial._trial_id)
        if place is None or param_name not in self.dimensions:
            return self.sampler.sample_independent(study, trial, param_name, param_distribution)
        return from_unit(self.points[place][self.dimensions[param_name]], param_distribution)


def configurations_before(study: optuna.Study, trial: FrozenTrial) -> int:
    """How many configurations the study began before `trial` (trial numbers are the order)."""
    trials = study._get_trials(deepcopy=False, use_cache=False)
    return sum(1 for other in trials if other.number < trial.number and not is_promotion(other))


def from_unit(u: float, distribution: BaseDistribution) -> Any:
    """The value at quantile `u` (in [0, 1)) of a distribution, uniform in its own scale: an
    equal share of the choices, of the range, or of the range's logarithm."""
    u = min(max(float(u), 0.0), math.nextafter(1.0, 0.0))
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[int(u * len(distribution.choices))]
    if isinstance(distribution, IntDistribution):
        low, high, step = distribution.low, distribution.high, distribution.step
        if distribution.log:  # each integer its share of log(low)..log(high + 1)
            return min(high, max(low, math.floor(math.exp(_between(math.log(low), math.log(high + 1), u)))))
        return low + step * int(u * ((high - low) // step + 1))
    if isinstance(distribution, FloatDistribution):
        low, high = distribution.low, distribution.high
        if distribution.log:
            return float(min(high, math.exp(_between(math.log(low), math.log(high), u))))
        if distribution.step is not None:
            steps = int(np.floor((high - low) / distribution.step + 1e-9)) + 1
            return float(min(high, low + distribution.step * int(u * steps)))
        return float(_between(low, high, u))
    raise TypeError(f"no stratified start for {type(distribution).__name__}")


def _between(low: float, high: float, u: float) -> float:
    return low + u * (high - low)
