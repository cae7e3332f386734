"""A resumed study keeps the training budget and data it began with: otherwise its leaderboard
and margins would compare trials of 2 epochs with trials of 1 epoch."""

from __future__ import annotations

import optuna

from tests.helpers import all_runs, load, run_command, stores


def snapshot(tmp_path) -> tuple:
    """What a refused resume must leave as it was: the study's trials and attributes, the runs."""
    study = load(tmp_path)
    trials = [(t.number, t.state, t.value, t.user_attrs) for t in study.get_trials()]
    _, client = stores(tmp_path)
    runs = sorted((r.info.run_id, r.info.status, r.info.end_time) for r in all_runs(client))
    return trials, study.user_attrs, runs


def test_a_resume_with_other_epochs_is_refused_in_one_line_and_changes_nothing(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides = [o for o in overrides if not o.startswith("data.")]
    overrides += ["data=digits", "study.n_trials=1", "pruner=none", "trainer.epochs=1"]
    first = run_command("sweep", *overrides, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path)
    assert before[1]["training_budget"]["trainer.epochs"] == 1

    resumed = run_command("sweep", *overrides, "trainer.epochs=2", cwd=tmp_path)

    assert resumed.returncode != 0
    (line,) = resumed.stderr.strip().splitlines()
    assert line.startswith(
        "study.sweep: error: trainer.epochs: changed since study default began (was 1, now 2)"
    )
    assert snapshot(tmp_path) == before
    assert [t.state for t in load(tmp_path).get_trials()] == [optuna.trial.TrialState.COMPLETE]
