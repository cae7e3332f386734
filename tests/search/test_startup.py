"""sampler.startup=stratified: the first configurations spread over the space, then the sampler."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from study.config.checks import checked_sweep_config
from study.core.errors import ConfigError
from study.core.names import CONFIG_ATTR
from study.search.samplers import RungSampler, build_sampler, for_scheduler
from study.search.space import SearchSpace
from study.search.startup import StratifiedStart, from_unit
from tests.helpers import compose_config

SPACE = {
    "model": CategoricalDistribution(["softmax", "cnn"]),
    "optimizer": CategoricalDistribution(["sgd", "adam", "rmsprop"]),
    "learning_rate": FloatDistribution(1e-4, 1.0, log=True),
}


def first_configurations(seed: int, count: int, n_startup_trials: int = 8) -> list[dict]:
    sampler = StratifiedStart(optuna.samplers.TPESampler(seed=seed), n_startup_trials, SPACE, seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    sampled = []
    for _ in range(count):
        trial = study.ask(SPACE)
        study.tell(trial, trial.params["learning_rate"])
        sampled.append(trial.params)
    return sampled


@pytest.mark.parametrize("seed", range(5))
def test_the_first_configurations_give_every_choice_and_every_part_of_a_range_its_share(seed):
    first = first_configurations(seed, 8)
    assert sorted(p["model"] for p in first) == ["cnn"] * 4 + ["softmax"] * 4
    assert {p["optimizer"] for p in first} == {"sgd", "adam", "rmsprop"}
    # Each eighth of the learning rate's four decades holds one of the eight.
    eighths = sorted(int((math.log10(p["learning_rate"]) + 4) / 0.5) for p in first)
    assert eighths == list(range(8))


def test_after_the_startup_the_wrapped_sampler_decides_and_a_seed_replays():
    first, again = first_configurations(3, 14), first_configurations(3, 14)
    assert first == again
    # TPE maximizes the learning rate from trial 8 on: it moves to the upper end.
    assert max(p["learning_rate"] for p in first[8:]) > 0.1


def test_once_the_points_are_taken_the_study_is_no_longer_counted():
    sampler = StratifiedStart(optuna.samplers.RandomSampler(seed=0), 2, SPACE, 0)
    study = optuna.create_study(sampler=sampler)
    for expected in (False, False, True):
        study.tell(study.ask(SPACE), 0.5)
        assert sampler.started is expected
    assert not sampler.places


def test_promotions_take_no_point_of_the_sequence():
    sampler = StratifiedStart(optuna.samplers.RandomSampler(seed=0), 4, SPACE, 0)
    study = optuna.create_study(sampler=sampler)
    first = study.ask(SPACE)
    study.tell(first, 0.5)
    study.enqueue_trial(first.params, user_attrs={CONFIG_ATTR: first.number})  # a promotion
    promotion = study.ask(SPACE)
    study.tell(promotion, 0.6)
    second = study.ask(SPACE)
    expected = {name: from_unit(u, SPACE[name]) for name, u in zip(SPACE, sampler.points[1], strict=True)}
    assert second.params == expected


@pytest.mark.parametrize(
    ("distribution", "quantiles", "expected"),
    [
        (CategoricalDistribution(["a", "b", "c"]), [0.0, 0.34, 0.999], ["a", "b", "c"]),
        (IntDistribution(1, 4), [0.0, 0.26, 0.5, 0.9999], [1, 2, 3, 4]),
        (IntDistribution(0, 10, step=5), [0.0, 0.4, 0.99], [0, 5, 10]),
        (IntDistribution(1, 100, log=True), [0.0, 0.9999], [1, 100]),
        (FloatDistribution(0.0, 0.7), [0.0, 0.5], [0.0, 0.35]),
        (FloatDistribution(0.0, 1.0, step=0.25), [0.0, 0.99], [0.0, 1.0]),
        (FloatDistribution(1e-4, 1.0, log=True), [0.0, 0.5], [1e-4, 1e-2]),
    ],
)
def test_a_quantile_maps_into_the_distribution_in_its_own_scale(distribution, quantiles, expected):
    values = [from_unit(u, distribution) for u in quantiles]
    assert values == pytest.approx(expected) if isinstance(expected[0], float) else values == expected
    assert all(distribution._contains(distribution.to_internal_repr(value)) for value in values)


def test_the_sweep_config_turns_it_on_under_asha_too_and_refuses_a_typo():
    cfg = checked_sweep_config(compose_config("sweep", ["sampler.startup=stratified", "scheduler=asha"]))
    sampler = for_scheduler(build_sampler(cfg.sampler, SearchSpace(cfg.search_space)), cfg)
    assert isinstance(sampler, RungSampler) and isinstance(sampler.sampler, StratifiedStart)
    default = checked_sweep_config(compose_config("sweep", []))
    assert isinstance(
        build_sampler(default.sampler, SearchSpace(default.search_space)), optuna.samplers.TPESampler
    )
    with pytest.raises(ConfigError, match=r"sampler\.startup: expected random or stratified, got 'sobol'"):
        checked_sweep_config(compose_config("sweep", ["sampler.startup=sobol"]))
