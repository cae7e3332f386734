"""What a person reads of a scheduler=asha study, where one configuration trains in several
trials (one per rung): the leaderboard lists configurations, margins compare at the same
budget, and the study line counts configurations and trials apart."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from rich.console import Console

from study.core.names import BASELINE_ATTR
from study.reporting.leaderboard import trials_table
from study.reporting.live import StudyProgress
from study.reporting.summary import final_summary
from study.search.asha import Ladder
from study.search.budget import count_trials
from tests.search.test_ranking import Study

TARGETS = {"lr": "optimizer.learning_rate"}
FIRST_RUNGS = (0.9552, 0.9400, 0.9600, 0.9000, 0.9100, 0.9200, 0.9300, 0.9350)


def eight_configurations(baseline: int = 0) -> Study:
    """Rungs of 1 and 3 epochs (eta 3): 8 configurations, the best 2 promoted. Configuration 2
    wins at 3 epochs (trial 8); configuration 0 is the runner-up there (trial 9)."""
    s = Study()
    for number, value in enumerate(FIRST_RUNGS):
        s.first(value, **({BASELINE_ATTR: True} if number == baseline else {}))
    s.promote(2, 1, 0.9676, {2: 0.9650, 3: 0.9676})
    s.promote(0, 1, 0.9652, {2: 0.9600, 3: 0.9652})
    return s


def summary_of(s: Study, tmp_path) -> list[str]:
    settings = SimpleNamespace(
        study=SimpleNamespace(name="asha", storage="sqlite:///runs/optuna.db"),
        scheduler=SimpleNamespace(name="asha", resource_unit="epochs"),
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the summary may look for runs there: none
    text = final_summary(s.study, settings, store, tmp_path, {}, TARGETS)
    return [line.strip() for line in text.splitlines()]


def test_the_leaderboard_lists_each_configuration_once_with_the_epochs_it_trained():
    table = trials_table(eight_configurations().trials, TARGETS)
    rows = table[["trial", "rung", "val_accuracy", "epochs", "role"]].values.tolist()
    assert rows == [
        [8, 1, 0.9676, 3, "winner"],  # configuration 2: 1 epoch, then 2 more from its checkpoint
        [9, 1, 0.9652, 3, "baseline"],  # configuration 0, the baseline, at its highest rung
        [1, 0, 0.9400, 1, ""],
        [7, 0, 0.9350, 1, ""],
        [6, 0, 0.9300, 1, ""],
        [5, 0, 0.9200, 1, ""],
        [4, 0, 0.9100, 1, ""],
        [3, 0, 0.9000, 1, ""],
    ]


def test_every_rung_on_request():
    table = trials_table(eight_configurations().trials, TARGETS, all_rungs=True)
    rows = table[["trial", "rung", "epochs", "role"]].values.tolist()
    assert rows[:4] == [[8, 1, 3, "winner"], [9, 1, 3, "baseline"], [2, 0, 1, ""], [0, 0, 1, "baseline"]]
    assert len(rows) == 10


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [
        # The baseline reached 3 epochs too: compared there, not at its 1-epoch trial 0 (+0.0124).
        (0, "+0.0024 over the baseline at 3 epochs (trial 9, 0.9652)"),
        # The baseline stopped at 1 epoch: the winner's own 1-epoch trial is what compares.
        (1, "+0.0200 over the baseline at 1 epoch (trial 1, 0.9400; the winner there: trial 2, 0.9600)"),
        (2, "the baseline won (trial 8, the base config): nothing searched beat it"),
    ],
)
def test_margins_compare_configurations_at_the_same_budget(tmp_path, baseline, expected):
    lines = summary_of(eight_configurations(baseline), tmp_path)
    assert "winner: trial 8, val_accuracy 0.9676" in lines
    assert "+0.0024 over the runner-up at 3 epochs (trial 9, 0.9652)" in lines
    assert expected in lines


def test_a_runner_up_that_stopped_lower_is_met_by_the_winners_trial_there(tmp_path):
    s = Study()
    s.first(0.80)
    s.first(0.90)  # better at 1 epoch, but only after configuration 0 was promoted
    s.first(0.60)
    s.promote(0, 1, 0.85, {2: 0.82, 3: 0.85})
    lines = summary_of(s, tmp_path)
    assert (
        "0.1000 under the runner-up at 1 epoch (trial 1, 0.9000; the winner there: trial 0, 0.8000)" in lines
    )


def test_the_study_line_counts_configurations_and_the_trials_that_trained_them():
    s = eight_configurations()
    s.promote(3, 1, None, {2: 0.91}, state=TrialState.FAIL)
    trials = s.trials
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300, color_system=None)
    shown = StudyProgress("asha", 8, 3, targets=TARGETS, console=console, ladder=Ladder((1, 3), 3))
    shown.update(count_trials(trials), trials, force=True, done=8)
    text = out.getvalue()
    assert "study asha: 8 configurations, 1 worker" in text
    assert (
        "study asha: 8/8 configurations done (10 trials: 8 first rungs, 2 promotions), 1 failed, 0 running"
        in text
    )
    assert "best val_accuracy 0.9676 (trial 8)" in text


def test_a_retried_baseline_is_compared_by_the_retry_that_completed(tmp_path):
    """Without a scheduler: the baseline's first attempt died, its retry (tagged too) completed."""
    s = Study()
    s._add(TrialState.FAIL, None, {"lr": 0.01}, {}, {BASELINE_ATTR: True})
    s._add(TrialState.COMPLETE, 0.90, {"lr": 0.02}, {1: 0.90}, {})
    s._add(TrialState.COMPLETE, 0.85, {"lr": 0.01}, {1: 0.85}, {BASELINE_ATTR: True})
    lines = summary_of(s, tmp_path)
    assert "+0.0500 over the runner-up, trial 2 (0.8500)" in lines
    assert "+0.0500 over the baseline, trial 2 (0.8500)" in lines
