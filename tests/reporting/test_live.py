"""What the terminal shows during and after a study, from the trials the driver polls."""

from __future__ import annotations

import datetime
import io
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from study.reporting.leaderboard import trials_table
from study.reporting.live import StudyProgress
from study.reporting.summary import final_summary
from study.search.asha import Ladder
from study.search.budget import count_trials

TARGETS = {
    "model": "model",
    "sgd_learning_rate": "optimizer.learning_rate",
    "adaptive_learning_rate": "optimizer.learning_rate",
}
MODELS = CategoricalDistribution(["softmax", "mlp", "cnn"])
SGD_RATE = FloatDistribution(1e-3, 1.0, log=True)
ADAPTIVE_RATE = FloatDistribution(1e-4, 1e-2, log=True)


def trial(number, state, value=None, epochs=(), lr_name="adaptive_learning_rate", **attrs):
    start = datetime.datetime.now() - datetime.timedelta(seconds=30)
    frozen = create_trial(
        state=state,
        value=value,
        params={"model": "cnn", lr_name: 0.00123 if lr_name != "sgd_learning_rate" else 0.5},
        distributions={
            "model": MODELS,
            lr_name: SGD_RATE if lr_name == "sgd_learning_rate" else ADAPTIVE_RATE,
        },
        intermediate_values=dict(enumerate(epochs, start=1)),
        user_attrs={"mlflow_run_id": f"run{number}", **attrs},
    )
    frozen.number = number
    frozen.datetime_start = start
    frozen.datetime_complete = None if state == TrialState.RUNNING else start + datetime.timedelta(seconds=20)
    return frozen


def a_study_in_progress():
    return [
        trial(0, TrialState.COMPLETE, 0.91, (0.88, 0.91), baseline=True),
        trial(1, TrialState.COMPLETE, 0.9756, (0.95, 0.9756), lr_name="sgd_learning_rate"),
        trial(2, TrialState.PRUNED, None, (0.31,)),
        trial(
            3, TrialState.FAIL, None, (), fail_reason="NonFiniteLossError: train_loss is nan\n" + "x" * 5000
        ),
        trial(4, TrialState.RUNNING, None, (0.9412,)),
    ]


def progress(terminal: bool) -> tuple[StudyProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200, color_system=None)
    shown = StudyProgress(
        "cnn-lr", 6, 3, targets=TARGETS, workers=2, log_folder=Path("runs/x/logs"), console=console
    )
    shown.start -= 3600  # the trials above finished in this session
    return shown, out


def test_plain_lines_when_stdout_is_not_a_terminal():
    shown, out = progress(terminal=False)
    trials = a_study_in_progress()
    shown.update(count_trials(trials), trials)
    text = out.getvalue()
    assert "study cnn-lr: 6 trials, 2 workers; worker logs: runs/x/logs/worker_N.log" in text
    assert "trial   1 complete  val_accuracy 0.9756  epoch 2/3" in text
    assert "model=cnn optimizer.learning_rate=0.5  best so far" in text
    assert "trial   2 pruned at epoch 1  val_accuracy 0.3100" in text
    assert "trial   3 failed: NonFiniteLossError: train_loss is nan  " in text
    assert "xxxxxxxxxx" not in text  # a short reason, not the dump
    assert "trial   4 started  model=cnn optimizer.learning_rate=0.00123" in text
    assert "trial   4 epoch 1/3  val_accuracy 0.9412" in text
    assert "3/6 done (2 complete, 1 pruned), 1 failed, 1 running | best val_accuracy 0.9756 (trial 1)" in text
    assert "ETA " in text
    assert "\x1b[" not in text  # no terminal control codes in a log file
    # The next poll repeats nothing that was said.
    shown.update(count_trials(trials), trials, force=True)
    assert out.getvalue() == text


def test_live_display_in_a_terminal():
    shown, out = progress(terminal=True)
    trials = a_study_in_progress()
    counts = count_trials(trials)
    shown.update(counts, trials)
    screen = Console(file=io.StringIO(), width=200, color_system=None)
    with screen.capture() as captured:
        screen.print(shown.render(counts, trials, datetime.datetime.now()))
    live = captured.get()
    row = next(line for line in live.splitlines() if line.lstrip().startswith("4 "))
    for part in ("model=cnn learning_rate=0.00123", "epoch 1/3", "0.9412", "30s"):
        assert part in row, live
    assert "3/6 done" in live and "best val_accuracy 0.9756 (trial 1)" in live and "ETA" in live
    shown.close(counts, trials)
    assert "trial   1 complete" in out.getvalue()  # finished trials stay above the live lines


def test_the_eta_ends_at_the_deadline_when_study_timeout_ends_the_study_first():
    """n_trials=100000 with study.timeout=300: the ETA is the time to the deadline plus what the
    running trial has left (none: it ran longer than the mean), not 100000 trials' worth."""
    trials = a_study_in_progress()
    counts = count_trials(trials)
    for deadline, expected in ((None, "ETA 555h"), (300.5, "ETA 5m00s"), (-60, "ETA 0s")):
        out = io.StringIO()
        shown = StudyProgress(
            "long",
            100000,
            3,
            targets=TARGETS,
            console=Console(file=out, force_terminal=False, width=200),
            deadline=None if deadline is None else time.time() + deadline,
        )
        shown.update(counts, trials)
        line = out.getvalue().splitlines()[-1]
        assert expected in line, (deadline, line)


def test_log_records_print_above_the_live_lines():
    handler = logging.StreamHandler(sys.__stderr__)
    logging.getLogger().addHandler(handler)
    try:
        shown, _ = progress(terminal=True)
        trials = a_study_in_progress()
        shown.update(count_trials(trials), trials)
        assert handler.stream is sys.stderr and sys.stderr is not sys.__stderr__  # rich's stand-in
        shown.close()
        assert handler.stream is sys.__stderr__
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_resumed_study_sums_up_earlier_sessions_in_one_line():
    shown, out = progress(terminal=False)
    shown.start += 7200  # every trial finished before this session
    trials = a_study_in_progress()[:3]
    shown.update(count_trials(trials), trials)
    text = out.getvalue()
    assert "resumed with 3 trials done in earlier sessions (best val_accuracy 0.9756, trial 1)" in text
    assert "trial   1 complete" not in text


def test_final_summary_says_what_won_by_how_much_and_where_to_look(tmp_path, monkeypatch):
    # The server named here does not exist: its noise lookup fails at once, not after the
    # retries an earlier test's storage set for this process (study.store_retry_seconds).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    study = optuna.create_study(direction="maximize")
    study.add_trials(a_study_in_progress()[:4])
    settings = SimpleNamespace(
        study=SimpleNamespace(name="cnn-lr", storage="postgresql://u:secret@db/optuna")
    )
    summary = {
        "best_trial_test_accuracy": 0.9741,
        "best_trial_run_id": "abc123",
        "best_trial_model_uri": "models:/cnn-lr/1",
    }
    text = final_summary(study, settings, "http://mlflow:5000", tmp_path, summary, TARGETS)
    assert "winner: trial 1, val_accuracy 0.9756, test_accuracy 0.9741" in text
    assert "model=cnn optimizer.learning_rate=0.5" in text
    assert "+0.0656 over the runner-up, trial 0 (0.9100)" in text
    assert "+0.0656 over the baseline, trial 0 (0.9100)" in text
    assert f"{tmp_path}/leaderboard.csv" in text
    assert "python -m study.report --study cnn-lr --tracking-uri http://mlflow:5000" in text
    assert "python -m study.reproduce abc123 --tracking-uri http://mlflow:5000" in text
    assert "mlflow models serve -m models:/cnn-lr/1" in text
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in text
    assert "optuna-dashboard postgresql://u:***@db/optuna" in text and "secret" not in text


def test_leaderboard_columns_are_config_keys_with_roles_and_rounded_figures():
    table = trials_table(a_study_in_progress(), TARGETS, test_accuracy=0.97412345)
    assert list(table.columns) == [
        "trial",
        "state",
        "val_accuracy",
        "test_accuracy",
        "epochs",
        "duration_s",
        "role",
        "model",
        "optimizer.learning_rate",
        "error",
        "run_id",
    ]
    assert list(table["trial"]) == [1, 0, 2, 4, 3]  # complete best first, then pruned, running, failed
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "RUNNING", "FAIL"]
    first = table.iloc[0]
    assert first["role"] == "winner" and first["test_accuracy"] == 0.9741
    assert table.iloc[1]["role"] == "baseline"
    assert table["test_accuracy"].notna().sum() == 1
    assert list(table["optimizer.learning_rate"]) == [0.5, 0.00123, 0.00123, 0.00123, 0.00123]
    assert table.iloc[4]["error"] == "NonFiniteLossError: train_loss is nan"


def test_a_trial_that_lost_the_race_for_the_last_places_is_not_on_the_leaderboard():
    raced = [*a_study_in_progress(), trial(5, TrialState.FAIL, None, (), not_needed=True)]
    assert list(trials_table(raced, TARGETS)["trial"]) == [1, 0, 2, 4, 3]


def test_asha_segments_show_their_rung_and_where_they_are_on_the_configurations_curve():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200, color_system=None)
    ladder = Ladder((1, 3, 9), 3)
    shown = StudyProgress("asha", 6, 9, targets=TARGETS, console=console, ladder=ladder)
    first = trial(0, TrialState.RUNNING, None, ())
    promotion = create_trial(
        state=TrialState.RUNNING,
        params=first.params,
        distributions=first.distributions,
        intermediate_values={4: 0.95, 5: 0.96},  # resumed at epoch 3 of configuration 0
        user_attrs={"config": 0, "rung": 2},
    )
    just_promoted = create_trial(
        state=TrialState.RUNNING,
        params=first.params,
        distributions=first.distributions,
        user_attrs={"config": 0, "rung": 1},
    )
    assert shown.epoch_text(first) == "rung 0 epoch 0/1"
    assert shown.epoch_text(promotion) == "rung 2 epoch 5/9"
    assert shown.epoch_text(just_promoted) == "rung 1 epoch 1/3"
    steps = StudyProgress("asha", 6, None, console=console, ladder=Ladder((30, 90, 270), 3, unit="steps"))
    assert steps.epoch_text(promotion) == "rung 2 step 5/270"
