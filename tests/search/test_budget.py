"""The one rule for "is the study done / should this session stop"."""

from __future__ import annotations

import datetime

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from study.core.names import FAIL_REASON_ATTR, NOT_NEEDED_ATTR
from study.search.budget import DONE, TIMEOUT, TOO_MANY_FAILURES, Budget

X = {"x": optuna.distributions.FloatDistribution(0, 1)}
SESSION_START = datetime.datetime(2026, 11, 22, 12, 0, 0)


def trial(state: TrialState, started: datetime.datetime = SESSION_START, **user_attrs):
    return optuna.trial.FrozenTrial(
        number=0,
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        datetime_start=started,
        datetime_complete=started if state.is_finished() else None,
        params={"x": 0.5},
        distributions=X,
        user_attrs=user_attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )


def settings(n_trials=3, max_failed=None):
    return OmegaConf.create({"study": {"n_trials": n_trials, "max_failed_trials": max_failed}})


def test_every_failure_of_the_session_counts_whatever_raised():
    start = SESSION_START.timestamp()
    earlier = SESSION_START - datetime.timedelta(hours=1)
    trials = [
        trial(TrialState.FAIL),  # failed before it could record a reason (MLflow down, sampling)
        trial(TrialState.FAIL, **{FAIL_REASON_ATTR: "ValueError: boom"}),
        trial(TrialState.FAIL, **{NOT_NEEDED_ATTR: True}),  # lost a race: no failure
        trial(TrialState.FAIL, started=earlier),  # an earlier session's
        trial(TrialState.COMPLETE),
    ]
    verdict = Budget.of(settings(max_failed=2), start, None).judge(trials, now=start + 1)
    assert verdict.failed_this_session == 2
    assert verdict.stop == TOO_MANY_FAILURES
    assert "2 trials failed" in verdict.reason()
    assert Budget.of(settings(max_failed=3), start, None).judge(trials, now=start + 1).stop is None


def test_done_wins_and_running_trials_hold_new_ones_back():
    start = SESSION_START.timestamp()
    running = [trial(TrialState.COMPLETE), trial(TrialState.PRUNED), trial(TrialState.RUNNING)]
    verdict = Budget.of(settings(n_trials=3), start, None).judge(running, now=start)
    assert verdict.stop is None and not verdict.may_start_trial  # the last one runs elsewhere
    done = [trial(TrialState.COMPLETE)] * 3 + [trial(TrialState.FAIL)] * 5
    assert Budget.of(settings(n_trials=3, max_failed=1), start, None).judge(done, now=start).stop == DONE
    assert Budget.of(settings(), start, start + 5).judge([], now=start + 6).stop == TIMEOUT


def numbered(number: int, state: TrialState) -> optuna.trial.FrozenTrial:
    frozen = trial(state)
    frozen.number = number
    return frozen


def test_a_trial_beyond_n_trials_is_not_needed_and_the_rule_is_asha_with_one_rung():
    """Workers race for the last places: trials done, and running ones that started earlier,
    fill study.n_trials; a later one is not needed. Without ASHA each trial is a configuration."""
    budget = Budget.of(settings(n_trials=2), SESSION_START.timestamp(), None)
    trials = [
        numbered(0, TrialState.COMPLETE),
        numbered(1, TrialState.RUNNING),
        numbered(2, TrialState.RUNNING),
    ]
    assert budget.surplus(trials[1], trials) is None  # the second place is its own
    assert budget.surplus(trials[2], trials) == "1 trials done and 1 running reach study.n_trials"
    assert Budget.of(settings(n_trials=3), 0.0, None).surplus(trials[2], trials) is None


def test_the_budget_is_built_once_from_the_settings():
    budget = Budget.of(settings(n_trials=4), 10.0, 20.0)
    assert (budget.n_trials, budget.max_failed, budget.session_start, budget.deadline) == (4, 4, 10.0, 20.0)
    assert Budget.of(settings(n_trials=4, max_failed=1), 10.0, None).max_failed == 1
