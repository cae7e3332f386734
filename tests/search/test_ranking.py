"""The one ranking of trials, with scheduler=asha's configurations: a configuration once, at its
furthest trial, and margins between configurations at the same budget (trials written straight
into an in-memory Optuna study, as workers leave them)."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from study.core.names import BASELINE_ATTR, CONFIG_ATTR, NOT_NEEDED_ATTR, RUNG_ATTR
from study.search import asha, ranking

LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}


class Study:
    """Trials of scheduler=asha: `first` starts a configuration, `promote` trains it on."""

    def __init__(self):
        self.study = optuna.create_study(direction="maximize")

    def first(self, value, rung=0, state=TrialState.COMPLETE, epochs=None, **attrs):
        steps = epochs or {1: value}
        return self._add(
            state, value, {"lr": 0.001 * (len(self.study.trials) + 1)}, steps, {RUNG_ATTR: rung, **attrs}
        )

    def promote(self, config, rung, value, steps, state=TrialState.COMPLETE, **attrs):
        params = self.study.trials[config].params
        return self._add(state, value, params, steps, {CONFIG_ATTR: config, RUNG_ATTR: rung, **attrs})

    def _add(self, state, value, params, steps, attrs):
        done = state == TrialState.COMPLETE
        self.study.add_trial(
            create_trial(
                state=state,
                value=value if done else None,
                params=params,
                distributions=LR,
                intermediate_values=steps,
                user_attrs=attrs,
            )
        )
        return self.study.trials[-1]

    @property
    def trials(self):
        return self.study.get_trials(deepcopy=False)


def rungs_1_3() -> tuple[Study, dict[str, optuna.trial.FrozenTrial]]:
    """Rungs of 1 and 3 epochs: the baseline (0) and configuration 2 were promoted; 2 won."""
    s = Study()
    named = {
        "baseline": s.first(0.9552, **{BASELINE_ATTR: True}),
        "one": s.first(0.9400),
        "two": s.first(0.9600),
        "three": s.first(0.9000),
    }
    named["winner"] = s.promote(2, 1, 0.9676, {2: 0.9650, 3: 0.9676})
    named["baseline at 3"] = s.promote(0, 1, 0.9652, {2: 0.9600, 3: 0.9652})
    named["failed"] = s.promote(3, 1, None, {2: 0.9100}, state=TrialState.FAIL)
    return s, named


def test_a_configuration_is_listed_once_at_its_highest_complete_rung():
    s, named = rungs_1_3()
    kept = ranking.one_per_configuration(s.trials)
    # In the order given: configuration 3's failed promotion leaves its complete first rung.
    assert [t.number for t in kept] == [1, 3, 4, 5]
    assert ranking.best_trial(s.trials).number == named["winner"].number
    assert [t.number for t in ranking.ranked_configurations(s.trials)] == [4, 5, 1, 3]


def test_without_a_scheduler_every_trial_is_its_own_configuration():
    s = Study()
    for value in (0.5, 0.7, 0.6):
        s._add(TrialState.COMPLETE, value, {"lr": value / 10}, {1: value, 2: value}, {})
    s._add(TrialState.FAIL, None, {"lr": 0.01}, {}, {})
    assert ranking.one_per_configuration(s.trials) == s.trials
    margin = ranking.margin_over(s.trials, s.trials[1], s.trials[2])
    assert (margin.rung, margin.winner.number, margin.other.number) == (None, 1, 2)
    assert round(margin.value, 4) == 0.1


def test_margins_compare_the_trials_at_the_highest_rung_both_completed():
    s, named = rungs_1_3()
    over_baseline = ranking.margin_over(s.trials, named["winner"], named["baseline"])
    assert over_baseline.rung == 1  # the baseline reached 3 epochs too: compared there
    assert (over_baseline.winner.number, over_baseline.other.number) == (4, 5)
    assert round(over_baseline.value, 4) == 0.0024  # not 0.9676 - 0.9552 = +0.0124
    over_one = ranking.margin_over(s.trials, named["winner"], named["one"])
    assert over_one.rung == 0  # configuration 1 stopped at 1 epoch: the winner's trial 2 there
    assert (over_one.winner.number, over_one.other.number) == (2, 1)
    assert round(over_one.value, 4) == 0.02
    assert ranking.trial_at_rung(s.trials, 3, 1) is None  # failed: no score at 3 epochs
    assert ranking.trial_at_rung(s.trials, 3, 0).number == 3


def test_a_margin_can_be_negative_and_needs_a_shared_rung():
    s = Study()
    early = s.first(0.80)  # promoted while it led a rung of two
    s.first(0.70)
    s.promote(0, 1, 0.85, {2: 0.82, 3: 0.85})
    late = s.first(0.90)  # better at 1 epoch, after the promotion was decided
    above = s.first(0.84, rung=1, epochs={1: 0.6, 2: 0.8, 3: 0.84})  # a bracket that starts at rung 1
    winner = ranking.best_trial(s.trials)
    assert winner.number == 2
    behind = ranking.margin_over(s.trials, winner, late)
    assert (behind.rung, behind.winner.number) == (0, early.number)
    assert round(behind.value, 4) == -0.1
    assert ranking.margin_over(s.trials, above, late) is None  # no rung in common


def test_a_trial_that_was_not_needed_is_no_score():
    s = Study()
    s.first(0.8)
    s.promote(0, 1, 0.9, {2: 0.9})
    s.promote(0, 1, 0.95, {2: 0.95}, **{NOT_NEEDED_ATTR: True})  # lost the race for the promotion
    s.first(0.7)
    assert ranking.trial_at_rung(s.trials, 0, 1).number == 1
    assert round(ranking.margin_over(s.trials, s.trials[1], s.trials[3]).value, 4) == 0.1


def test_a_configuration_trained_the_epochs_of_all_its_trials_up_to_the_rung():
    s, named = rungs_1_3()
    # A killed promotion of configuration 1 whose retry resumed after epoch 2 (its last checkpoint).
    s.promote(1, 1, None, {2: 0.94}, state=TrialState.FAIL)
    s.promote(1, 1, 0.9500, {3: 0.95})
    trained = asha.epochs_trained(s.trials)
    # A promotion reports its own segment's epochs only (2 of the winner's 3).
    assert len(named["winner"].intermediate_values) == 2
    assert trained == {0: 1, 1: 1, 2: 1, 3: 1, 4: 3, 5: 3, 6: 2, 7: 2, 8: 3}  # 6, 7: failed after 2
    assert (asha.rung_budget(s.trials, 0), asha.rung_budget(s.trials, 1), asha.rung_budget(s.trials, 2)) == (
        1,
        3,
        None,
    )
