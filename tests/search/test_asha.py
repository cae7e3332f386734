"""The decisions of scheduler=asha, on real Optuna trials in an in-memory study (no training)."""

from __future__ import annotations

import math

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from study.config.checks import checked_sweep_config
from study.core.errors import ConfigError
from study.core.names import CONFIG_ATTR, NOT_NEEDED_ATTR, RUNG_ATTR
from study.search import asha, ranking
from study.search.asha import Ladder
from study.search.budget import DONE, Budget
from study.search.samplers import RungSampler, build_sampler, for_scheduler
from study.search.space import SearchSpace
from tests.helpers import compose_config

LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
NINE = Ladder((1, 3, 9), reduction_factor=3)


class Trials:
    """A study whose trials the tests write directly, as workers would leave them."""

    def __init__(self):
        self.study = optuna.create_study(direction="maximize")

    def config(self, value=None, state=TrialState.COMPLETE, lr=None, **attrs):
        """A configuration's first segment; returns its number."""
        lr = lr if lr is not None else 0.001 * (len(self.study.trials) + 1)
        return self._add(state, value, {"lr": lr}, attrs)

    def promotion(self, config, rung, value=None, state=TrialState.COMPLETE, **attrs):
        params = self.study.trials[config].params
        return self._add(state, value, params, {CONFIG_ATTR: config, RUNG_ATTR: rung, **attrs})

    def _add(self, state, value, params, attrs):
        self.study.add_trial(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params,
                distributions=LR,
                user_attrs=attrs,
            )
        )
        return self.study.trials[-1].number

    @property
    def all(self):
        return self.study.get_trials(deepcopy=False)


@pytest.mark.parametrize(
    ("low", "high", "eta", "budgets"),
    [
        (1, 9, 3, (1, 3, 9)),
        (1, 27, 3, (1, 3, 9, 27)),
        (1, 10, 3, (1, 3, 10)),  # the top rung is the full budget
        (1, 2, 3, (1, 2)),  # the default study: one epoch for all, a second for the best third
        (2, 3, 3, (2, 3)),
        (3, 3, 3, (3,)),
        (100, 2700, 3, (100, 300, 900, 2700)),
        (1, 16, 2, (1, 2, 4, 8, 16)),
    ],
)
def test_rung_budgets(low, high, eta, budgets):
    assert asha.rung_budgets(low, high, eta) == budgets


@pytest.mark.parametrize(
    ("top", "eta", "lowest", "budgets"),
    [
        (4950, 3, 550 / 3, (183, 550, 1650, 4950)),  # 9 epochs of 550 steps
        (2200, 3, 1100 / 3, (733, 2200)),  # the default study's 2 epochs: one promotion at least
        (900, 3, 1100 / 3, (300, 900)),  # less than an epoch
        (3, 3, 10, (1, 3)),
        (2, 3, 10, (2,)),  # no first rung of at least one step below the top
        (64, 4, 16 / 4, (4, 16, 64)),
    ],
)
def test_automatic_step_rungs_divide_the_top_rung_by_eta_down_to_about_an_epoch_over_eta(
    top, eta, lowest, budgets
):
    assert asha.rungs_down_from(top, eta, lowest) == budgets


def ladder_for(*overrides, train_examples=55000):
    cfg = compose_config("sweep", ["scheduler=asha", "pruner=none", *overrides])
    return asha.build_ladder(cfg.scheduler, cfg.trainer, train_examples)


def test_ladder_defaults_to_the_trainer_budget_and_refuses_bad_combinations():
    assert ladder_for("trainer.epochs=9").budgets == (1, 3, 9)
    # 55,000 examples in batches of 50: 1,100 steps an epoch, 2 epochs.
    steps = ladder_for("scheduler.resource_unit=steps", "scheduler.min_resource=100", "trainer.epochs=2")
    assert steps.budgets == (100, 300, 900, 2200) and steps.unit == "steps"
    # min_resource=auto: a first rung of about a third of an epoch, the others from the top down.
    by_max_steps = ladder_for("scheduler.resource_unit=steps", "trainer.max_steps=900")
    assert by_max_steps.budgets == (300, 900)
    nine_epochs = ladder_for("scheduler.resource_unit=steps", "trainer.epochs=9", "trainer.batch_size=100")
    assert nine_epochs.budgets == (183, 550, 1650, 4950)
    with pytest.raises(ConfigError, match=r"scheduler.max_resource: expected >= scheduler.min_resource"):
        ladder_for("scheduler.min_resource=4", "trainer.epochs=3")
    with pytest.raises(ConfigError, match=r"^trainer.max_steps: scheduler=asha with resource_unit=epochs"):
        ladder_for("trainer.max_steps=100")
    with pytest.raises(ConfigError, match=r"scheduler.brackets: expected at most the 3 rungs"):
        ladder_for("trainer.epochs=9", "scheduler.brackets=4")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["pruner=median"], "pruner: expected none with scheduler=asha"),
        (["scheduler.reduction_factor=1"], "scheduler.reduction_factor: expected an integer >= 2"),
        (["scheduler.resource_unit=batches"], "scheduler.resource_unit: expected epochs or steps"),
        (["scheduler.min_resource=0"], "scheduler.min_resource: expected 'auto' or an integer >= 1"),
    ],
)
def test_bad_scheduler_settings_are_one_line_errors(overrides, expected):
    cfg = compose_config("sweep", ["scheduler=asha", *overrides])
    with pytest.raises(ConfigError) as caught:
        checked_sweep_config(cfg)
    assert str(caught.value).startswith(expected)


def test_scheduler_asha_sets_pruner_none_and_a_named_pruner_is_refused():
    """`scheduler=asha` alone is a valid sweep: the scheduler decides what goes on, so its
    config sets pruner=none; a pruner named on the command line wins and is refused above."""
    cfg = compose_config("sweep", ["scheduler=asha"])
    assert cfg.pruner.name == "none"
    checked_sweep_config(cfg)
    assert compose_config("sweep", ["pruner=median", "scheduler=asha"]).pruner.name == "median"


def test_nothing_is_promoted_before_a_rung_has_eta_results():
    trials = Trials()
    trials.config(0.5)
    trials.config(0.7)
    assert asha.next_promotion(trials.all, NINE) is None


def test_the_best_of_a_rung_is_promoted_once_with_its_params():
    trials = Trials()
    trials.config(0.5)
    best = trials.config(0.9, lr=0.3)
    trials.config(0.7)
    promotion = asha.next_promotion(trials.all, NINE)
    assert promotion == asha.Promotion(best, 1, {"lr": 0.3})
    assert promotion.user_attrs == {CONFIG_ATTR: best, RUNG_ATTR: 1}

    trials.promotion(best, 1, state=TrialState.WAITING)  # enqueued: no longer due
    assert asha.next_promotion(trials.all, NINE) is None
    for value in (0.6, 0.2, 0.3):  # six results: the top two go on
        trials.config(value)
    assert asha.next_promotion(trials.all, NINE).config == 2  # 0.7, the second best


def test_the_highest_rung_goes_first_and_the_top_rung_never():
    trials = Trials()
    configs = [trials.config(value) for value in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    for config, value in zip(configs[-3:], (0.91, 0.95, 0.93), strict=True):
        trials.promotion(config, 1, value)
    promotion = asha.next_promotion(trials.all, NINE)
    assert (promotion.config, promotion.rung) == (configs[-2], 2)  # before rung 0's candidates
    trials.promotion(configs[-2], 2, 0.97)
    assert asha.next_promotion(trials.all, NINE) is None  # rung 2 is the top (9 epochs)
    for value in (0.01, 0.02, 0.03):  # 12 results at rung 0: the fourth best goes on
        trials.config(value)
    promotion = asha.next_promotion(trials.all, NINE)
    assert (promotion.config, promotion.rung) == (configs[5], 1)


def test_ties_go_to_the_earlier_configuration_and_failures_are_not_promoted_again():
    trials = Trials()
    first = trials.config(0.8)
    trials.config(0.8)
    trials.config(0.1)
    assert asha.next_promotion(trials.all, NINE).config == first
    trials.promotion(first, 1, state=TrialState.FAIL, fail_reason="NonFiniteLossError")
    assert asha.next_promotion(trials.all, NINE) is None  # top 1 of 3, and it failed


def test_results_of_trials_that_were_not_needed_do_not_count():
    trials = Trials()
    for value in (0.5, 0.6):
        trials.config(value)
    trials.config(0.9, **{NOT_NEEDED_ATTR: True})
    assert asha.next_promotion(trials.all, NINE) is None
    assert asha.configurations_done(trials.all) == 2


def test_the_study_is_done_when_n_configurations_are_in_and_no_promotion_is_due_or_running():
    trials = Trials()
    configs = [trials.config(value) for value in (0.5, 0.9, 0.7)]
    assert not asha.is_done(trials.all, 4, NINE)  # a configuration is missing
    assert not asha.is_done(trials.all, 3, NINE)  # the best one is due for rung 1
    assert not asha.may_start_configuration(trials.all, 3)
    assert asha.may_start_configuration(trials.all, 4)
    promoted = trials.promotion(configs[1], 1, state=TrialState.RUNNING)
    assert not asha.is_done(trials.all, 3, NINE)  # running
    trials.study.tell(promoted, 0.95)
    assert asha.is_done(trials.all, 3, NINE)  # one result at rung 1: nothing more is due


def test_duplicate_promotions_lowest_live_number_wins():
    trials = Trials()
    config = trials.config(0.9)
    waiting = trials.promotion(config, 1, state=TrialState.WAITING)
    running = trials.promotion(config, 1, state=TrialState.RUNNING)
    other = trials.promotion(trials.config(0.5), 1, state=TrialState.RUNNING)
    by_number = {trial.number: trial for trial in trials.all}
    assert asha.duplicate_of(by_number[running], trials.all).number == waiting
    assert asha.duplicate_of(by_number[waiting], trials.all) is None
    assert asha.duplicate_of(by_number[other], trials.all) is None
    assert asha.duplicate_of(by_number[config], trials.all) is None  # a first segment
    # A complete one wins whatever its number; a failed one never does.
    retried = trials.promotion(config, 1, state=TrialState.COMPLETE, value=0.95)
    assert asha.duplicate_of(by_number[waiting], trials.all).number == retried
    fresh = Trials()
    config = fresh.config(0.9)
    fresh.promotion(config, 1, state=TrialState.FAIL)
    retry = fresh.promotion(config, 1, state=TrialState.RUNNING)
    assert asha.duplicate_of(fresh.all[retry], fresh.all) is None


def test_the_winner_is_the_best_of_the_highest_rung():
    trials = Trials()
    early = trials.config(0.97)  # one lucky epoch
    steady = trials.config(0.95)
    trials.config(0.1)
    promoted = trials.promotion(steady, 1, 0.96)
    assert ranking.best_trial(trials.all).number == promoted
    assert ranking.rank_key(trials.all[promoted]) > ranking.rank_key(trials.all[early])
    assert ranking.best_trial([]) is None


def test_the_sampler_sees_each_configuration_once_ranked_by_rung_then_value():
    trials = Trials()
    configs = [trials.config(value / 10) for value in range(1, 7)]
    running = trials.config(state=TrialState.RUNNING)
    for config in configs[-2:]:
        trials.promotion(config, 1, 0.9)
    trials.promotion(configs[-1], 2, 0.93)
    trials.promotion(configs[0], 1, state=TrialState.RUNNING)  # no result yet
    trials.promotion(configs[1], 1, state=TrialState.FAIL)
    late_bracket = trials.config(0.8, **{RUNG_ATTR: 1})  # Hyperband's bracket 1: earned nothing
    view = {t.number: t.value for t in asha.sampler_view(trials.all)}
    expected = dict(zip(configs, (0.1, 0.2, 0.3, 0.4, 1.9, 2.93), strict=True))
    assert view == pytest.approx({**expected, running: None, late_bracket: 0.8})
    assert trials.all[configs[-1]].value == 0.6  # the study's own trials are left as they are


def test_tpe_behind_the_rung_sampler_samples_near_the_configurations_asha_promoted():
    """18 configurations over learning rates 1e-4..1, good near 1e-3; the best third went to
    rung 1, the best of those to rung 2. Learning from rung 1 alone (BOHB's rule, this
    project's first sampler) sampled rates of 0.26 to 0.71 here: the rung's "bad" group sat where
    the good configurations are. Ranked by rung, then value, TPE samples near the promoted."""

    def accuracy(lr, rung):
        return 0.97 - 0.2 * abs(math.log10(lr) + 3) + 0.01 * rung

    trials = Trials()
    rates = [10 ** (-4 + i * 4 / 17) for i in range(18)]
    configs = [trials.config(accuracy(lr, 0), lr=lr) for lr in rates]
    ranked = sorted(configs, key=lambda c: -trials.all[c].value)
    for rung, promoted in ((1, ranked[:6]), (2, ranked[:2])):
        for config in promoted:
            trials.promotion(config, rung, accuracy(trials.all[config].params["lr"], rung))
    trials.study.sampler = RungSampler(
        optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True, group=True)
    )
    sampled = []
    for _ in range(10):
        trial = trials.study.ask()
        sampled.append(trial.suggest_float("lr", 1e-4, 1.0, log=True))
        trials.study.tell(trial, state=TrialState.FAIL)
    near = [lr for lr in sampled if 1e-4 <= lr <= 1e-2]
    assert len(near) >= 8, sampled


def test_hyperband_brackets_get_configurations_in_hyperbands_proportions():
    ladder = Ladder((1, 3, 9), reduction_factor=3, brackets=3)
    brackets = [asha.bracket_for(index, ladder) for index in range(17)]
    # Brackets start at rung 0, 1 and 2: 9, 5 and 3 configurations of every 17, interleaved.
    assert [brackets.count(b) for b in range(3)] == [9, 5, 3]
    assert brackets[:3] == [0, 1, 0]
    assert {asha.bracket_for(index, NINE) for index in range(10)} == {0}


def simulate(n_trials, ladder, quality, workers=1):
    """A study driven by the scheduler's decisions, as the workers act on them, with a training
    stand-in: a configuration's value at resource r is quality(lr) * (1 - 1 / (r + 1))."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    running = []
    trained = {}  # config -> resource trained
    while True:
        trials = study.get_trials(deepcopy=False)
        if asha.is_done(trials, n_trials, ladder):
            assert not running
            return study, trained
        promotion = asha.next_promotion(trials, ladder)
        if len(running) < workers and (promotion or asha.may_start_configuration(trials, n_trials)):
            if promotion:
                study.enqueue_trial(promotion.params, user_attrs=promotion.user_attrs)
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
            frozen = study.get_trials(deepcopy=False)[trial.number]
            rung = asha.rung_of(frozen)
            config = asha.config_of(frozen)
            start, stop = ladder.segment(rung, first=not asha.is_promotion(frozen))
            assert trained.get(config, 0) == start  # resumed where it stopped: nothing twice
            trained[config] = stop
            running.append((trial.number, quality(lr) * (1 - 1 / (stop + 1))))
            continue
        number, value = running.pop(0)
        study.tell(number, value)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_simulated_study_promotes_the_best_and_trains_nothing_twice(workers):
    def quality(lr):  # best near lr = 0.01
        return 1 - abs(math.log10(lr) + 2) / 4

    study, trained = simulate(27, NINE, quality, workers)
    trials = study.get_trials()
    assert asha.configurations_done(trials) == 27
    at_rung = {rung: sum(1 for t in trials if asha.rung_of(t) == rung) for rung in range(3)}
    assert at_rung[0] == 27 and 3 <= at_rung[1] <= 11 and 1 <= at_rung[2] <= at_rung[1] // 3 + 1
    best_config = max((t for t in trials if not asha.is_promotion(t)), key=lambda t: quality(t.params["lr"]))
    assert trained[best_config.number] == 9  # the best configuration reached the full budget
    assert asha.config_of(ranking.best_trial(trials)) == best_config.number
    assert sum(trained.values()) < 27 * 9 / 3  # a third of training every configuration fully


def test_a_promotion_asks_the_sampler_for_nothing():
    trials = Trials()
    configs = [trials.config(value / 10, lr=10 ** (-value / 2)) for value in range(1, 8)]
    trials.study.sampler = RungSampler(optuna.samplers.TPESampler(seed=3, n_startup_trials=3))
    promotion = asha.next_promotion(trials.all, NINE)
    assert promotion.config == configs[-1]
    trials.study.enqueue_trial(promotion.params, user_attrs=promotion.user_attrs)
    resumed = trials.study.ask()
    assert resumed.relative_params == {}
    assert resumed.suggest_float("lr", 1e-4, 1.0, log=True) == promotion.params["lr"]


def test_only_model_based_samplers_are_wrapped_under_asha():
    def sampler_for(*overrides):
        cfg = checked_sweep_config(compose_config("sweep", list(overrides)))
        return for_scheduler(build_sampler(cfg.sampler, SearchSpace(cfg.search_space)), cfg)

    assert isinstance(sampler_for("scheduler=asha", "pruner=none"), RungSampler)
    random = sampler_for("scheduler=asha", "pruner=none", "sampler=random")
    assert isinstance(random, optuna.samplers.RandomSampler)
    assert isinstance(sampler_for("scheduler=none"), optuna.samplers.TPESampler)


def test_the_budget_rule_counts_configurations_and_names_the_due_promotion():
    """study/search/budget.py's one rule, with scheduler=asha: what the driver and the workers ask."""
    settings = OmegaConf.create({"study": {"n_trials": 3, "max_failed_trials": None}})
    trials = Trials()
    for value in (0.5, 0.9):
        trials.config(value)
    verdict = Budget.of(settings, session_start=0.0, deadline=None, ladder=NINE).judge(trials.all)
    assert verdict.stop is None and verdict.may_start_trial and verdict.promotion is None
    assert verdict.done == 2 and verdict.configurations_done == 2
    trials.config(0.7)
    verdict = Budget.of(settings, session_start=0.0, deadline=None, ladder=NINE).judge(trials.all)
    assert verdict.stop is None and verdict.may_start_trial  # three configurations, one due
    assert (verdict.promotion.config, verdict.promotion.rung) == (1, 1)
    promoted = trials.promotion(1, 1, state=TrialState.RUNNING)
    verdict = Budget.of(settings, session_start=0.0, deadline=None, ladder=NINE).judge(trials.all)
    assert verdict.stop is None and not verdict.may_start_trial  # it runs elsewhere: wait
    trials.study.tell(promoted, 0.95)
    verdict = Budget.of(settings, session_start=0.0, deadline=None, ladder=NINE).judge(trials.all)
    assert verdict.stop == DONE and verdict.done == 3 and verdict.counts.done == 4
