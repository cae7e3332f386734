"""A confirmation's results on the trials and in the ranking, on real Optuna trials in an
in-memory study: the winner is the best mean among the confirmed configurations that lead."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from study.core.names import CONFIRM_MEAN_ATTR
from study.search.confirmation import Confirmation, ConfirmedStudy, confirmation_key, with_confirmations
from study.search.ranking import best_trial, ranked_configurations

LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}


def study_of(*values: float) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate(values):
        trial = create_trial(
            state=TrialState.COMPLETE, value=value, params={"lr": 0.001 * (number + 1)}, distributions=LR
        )
        study.add_trial(trial)
    return study


def confirm(study: optuna.Study, number: int, mean: float) -> None:
    study.set_user_attr(confirmation_key(number), Confirmation(mean, 0.01, 3).as_attrs())


def numbers(trials) -> list[int]:
    return [trial.number for trial in trials]


def test_unconfirmed_trials_rank_by_their_single_value():
    study = study_of(0.90, 0.95, 0.93)
    trials = with_confirmations(study.get_trials(), study.user_attrs)
    assert numbers(ranked_configurations(trials)) == [1, 2, 0]
    assert best_trial(trials).number == 1


def test_the_confirmed_configurations_that_lead_rank_by_their_mean():
    study = study_of(0.90, 0.95, 0.93)
    confirm(study, 1, mean=0.91)  # a lucky seed: its mean is lower
    confirm(study, 2, mean=0.92)
    trials = ConfirmedStudy(study).get_trials()
    assert numbers(ranked_configurations(trials)) == [2, 1, 0]
    assert best_trial(trials).number == 2
    assert Confirmation.of(trials[2]) == Confirmation(0.92, 0.01, 3)
    assert CONFIRM_MEAN_ATTR not in study.get_trials()[2].user_attrs  # the storage's trials unchanged


def test_a_better_unconfirmed_trial_keeps_first_place_until_it_is_confirmed():
    study = study_of(0.90, 0.95, 0.93)
    confirm(study, 1, mean=0.91)
    confirm(study, 2, mean=0.92)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.96, params={"lr": 0.5}, distributions=LR))
    trials = ConfirmedStudy(study).get_trials()  # the search went on after the confirmation
    assert best_trial(trials).number == 3
    assert numbers(ranked_configurations(trials)) == [3, 1, 2, 0]  # single-seed order: none leads confirmed


def test_the_confirmed_study_is_the_same_study():
    study = study_of(0.90)
    view = ConfirmedStudy(study)
    assert view.study_name == study.study_name and view.trials[0].value == 0.90
    assert view.get_trials(states=(TrialState.FAIL,)) == []
