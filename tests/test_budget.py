"""The one rule for "is the study done / should this session stop"."""

from __future__ import annotations

import datetime

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from study.search.budget import DONE, TIMEOUT, TOO_MANY_FAILURES, judge
from study.core.names import FAIL_REASON_ATTR, NOT_NEEDED_ATTR

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
    verdict = judge(trials, settings(max_failed=2), start, deadline=None, now=start + 1)
    assert verdict.failed_this_session == 2
    assert verdict.stop == TOO_MANY_FAILURES
    assert "2 trials failed" in verdict.reason()
    assert judge(trials, settings(max_failed=3), start, None, now=start + 1).stop is None


def test_done_wins_and_running_trials_hold_new_ones_back():
    start = SESSION_START.timestamp()
    running = [trial(TrialState.COMPLETE), trial(TrialState.PRUNED), trial(TrialState.RUNNING)]
    verdict = judge(running, settings(n_trials=3), start, None, now=start)
    assert verdict.stop is None and not verdict.may_start_trial  # the last one runs elsewhere
    done = [trial(TrialState.COMPLETE)] * 3 + [trial(TrialState.FAIL)] * 5
    assert judge(done, settings(n_trials=3, max_failed=1), start, None, now=start).stop == DONE
    assert judge([], settings(), start, deadline=start + 5, now=start + 6).stop == TIMEOUT
