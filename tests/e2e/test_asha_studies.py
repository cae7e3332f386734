"""scheduler=asha end to end: real tiny studies, real worker processes, real stores."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import keras
import pandas as pd
import pytest
from optuna.trial import TrialState

from study import report, reproduce
from study.core.names import WORKER_ATTR
from study.execution.driver import run_sweep
from study.search import asha, ranking
from study.search.ranking import best_trial
from tests.helpers import (
    all_runs,
    compose_config,
    load,
    start_in_own_session,
    stores,
    sweep_command,
    wait_for,
)

STEPS_PER_EPOCH = 10  # 300 tiny training examples in batches of 32
ASHA = ["scheduler=asha", "pruner=none", "scheduler.reduction_factor=2", "trainer.epochs=4"]  # rungs 1, 2, 4


def curve(client, run_id: str, key: str = "val_accuracy") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def check_one_run_per_configuration(tmp_path: Path, n_trials: int):
    """The invariants of a finished asha study; returns (study, client, runs by id)."""
    study = load(tmp_path)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert asha.configurations_done(trials) == n_trials
    _, client = stores(tmp_path)
    runs = {run.info.run_id: run for run in all_runs(client) if run.data.tags.get("study.role") != "parent"}
    assert not [run_id for run_id, run in runs.items() if run.info.status == "RUNNING"]
    firsts = [t for t in asha.first_segments(trials) if t.state == TrialState.COMPLETE]
    assert len(firsts) == n_trials
    # One MLflow run per configuration; every complete trial of a configuration logs into it.
    config_runs = {t.number: t.user_attrs["mlflow_run_id"] for t in firsts}
    assert len(set(config_runs.values())) == n_trials
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["mlflow_run_id"] == config_runs[asha.config_of(trial)]
    return study, client, runs


def check_retried_from_its_checkpoint(tmp_path: Path, killed, n_trials: int) -> None:
    """The killed promotion failed and was retried once, with its params, from the
    configuration's last checkpoint: the epochs the killed attempt logged were logged again by
    the retry with the same values; the study's invariants hold."""
    study, client, runs = check_one_run_per_configuration(tmp_path, n_trials)
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL

    def key(trial):
        return asha.is_promotion(trial), asha.config_of(trial), asha.rung_of(trial)

    (retry,) = [t for t in trials if key(t) == key(killed) and t.state == TrialState.COMPLETE]
    assert retry.params == killed.params
    run_id = retry.user_attrs["mlflow_run_id"]
    by_step: dict[int, set[float]] = {}
    for step, value in curve(client, run_id):
        by_step.setdefault(step, set()).add(value)
    assert all(len(values) == 1 for values in by_step.values()), by_step
    assert sorted(by_step) == list(range(1, max(by_step) + 1))
    assert runs[run_id].info.status == "FINISHED"


# Promotions of several epochs in batches of 4: a signal sent when a promotion is one epoch in
# lands while it trains, not as it finishes (with promotions of one tiny epoch it sometimes did).
LONG_PROMOTIONS = [
    "trainer.epochs=12",
    "scheduler.max_resource=12",
    "scheduler.min_resource=3",
    "trainer.batch_size=4",
]
LONG_RUNGS = (3, 6, 12)


def promotion_mid_rung(tmp_path: Path):
    """A promotion that is training, an epoch in and two or more from its rung's end, with its
    worker recorded, or None."""
    try:
        trials = load(tmp_path).get_trials()
    except Exception:  # the study does not exist yet
        return None
    for trial in trials:
        running = trial.state == TrialState.RUNNING and trial.intermediate_values
        if not (asha.is_promotion(trial) and running and WORKER_ATTR in trial.user_attrs):
            continue
        if LONG_RUNGS[asha.rung_of(trial)] - max(trial.intermediate_values) >= 2:
            return trial
    return None


def test_asha_study_promotes_configurations_from_their_checkpoints(sweep_setup, capsys):
    tmp_path, overrides = sweep_setup
    overrides += [*ASHA, "study.n_trials=4"]
    summary = run_sweep(compose_config("sweep", overrides), overrides)
    printed = capsys.readouterr().out

    study, client, runs = check_one_run_per_configuration(tmp_path, 4)
    trials = study.get_trials()
    assert asha.is_done(trials, 4, asha.Ladder((1, 2, 4), 2))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    at_rung = {rung: [t for t in complete if asha.rung_of(t) == rung] for rung in range(3)}
    assert len(at_rung[0]) == 4 and len(at_rung[1]) >= 2 and len(at_rung[2]) >= 1
    assert len(runs) == 4
    for trial in complete:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        points = curve(client, run.info.run_id)
        # The curve is continuous across rungs: epochs 1..4 once each for a configuration that
        # reached rung 2, and the trial's value is the best of the curve up to its rung's end.
        budget = (1, 2, 4)[asha.rung_of(trial)]
        assert trial.value == max(value for step, value in points if step <= budget)
        assert [step for step, _ in points] == list(range(1, (1, 2, 4)[int(run.data.tags["study.rung"])] + 1))
        assert run.info.status == "FINISHED" and run.data.tags["optuna.trial.state"] == "COMPLETE"
    top = at_rung[2][0]
    top_run = top.user_attrs["mlflow_run_id"]
    assert runs[top_run].data.tags["study.rung"] == "2"
    assert runs[top_run].data.tags["study.config"] == str(asha.config_of(top))
    # Resumed, not retrained: the last checkpoint holds 4 epochs of optimizer steps.
    folder = tmp_path / "download"
    folder.mkdir()
    model = keras.saving.load_model(client.download_artifacts(top_run, "checkpoints/last.keras", str(folder)))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4 * STEPS_PER_EPOCH

    # The winner is the best of the highest rung; the leaderboard ranks by rung, then accuracy.
    assert summary["best_trial"] == best_trial(trials).number
    assert asha.rung_of(best_trial(trials)) == 2
    board = pd.read_csv(tmp_path / "runs" / "studies" / "default" / "leaderboard.csv")
    assert list(board["rung"].iloc[: len(at_rung[2])]) == [2] * len(at_rung[2])
    assert board["trial"].iloc[0] == summary["best_trial"]
    assert board["role"].iloc[0].startswith("winner")
    check_configurations_and_margins(trials, board, printed)
    # The winner's config.yaml replays its run as far as it went (three segments) in one go.
    winner_run = best_trial(trials).user_attrs["mlflow_run_id"]
    assert reproduce.main([winner_run, "--tracking-uri", f"sqlite:///{tmp_path / 'runs'}/mlflow.db"]) == 0
    # study.report shows the same table, from the stores.
    uri = f"sqlite:///{tmp_path / 'runs'}/mlflow.db"
    assert report.main(["--study", "default", "--tracking-uri", uri, "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "default.csv")
    assert list(table["trial"]) == list(board["trial"]) and list(table["rung"]) == list(board["rung"])
    assert list(table["epochs"]) == list(board["epochs"])
    every = [
        "--study",
        "default",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "all"),
        "--all-rungs",
    ]
    assert report.main(every) == 0
    trained = [t.number for t in trials if "mlflow_run_id" in t.user_attrs]
    assert sorted(pd.read_csv(tmp_path / "all" / "default.csv")["trial"]) == trained


def check_configurations_and_margins(trials, board: pd.DataFrame, printed: str) -> None:
    """leaderboard.csv lists each configuration once, at its highest rung, with the epochs it
    trained in all; the end lines compare the winner with the runner-up and the baseline at the
    highest budget each pair reached; the study line counts configurations and trials apart."""
    budgets = (1, 2, 4)
    tops = {trial.number: asha.rung_of(trial) for trial in ranking.one_per_configuration(trials)}
    assert len(board) == 4 and set(board["trial"]) == set(tops)
    assert dict(zip(board["trial"], board["epochs"], strict=True)) == {n: budgets[r] for n, r in tops.items()}
    winner, runner_up = ranking.ranked_configurations(trials)[:2]
    margin = ranking.margin_over(trials, winner, runner_up)
    assert margin.rung == asha.rung_of(runner_up)
    epochs = budgets[margin.rung]
    unit = "epochs" if epochs > 1 else "epoch"
    assert f"the runner-up at {epochs} {unit} (trial {runner_up.number}, {runner_up.value:.4f}" in printed
    baseline = trials[0]
    if asha.config_of(winner) == 0:
        assert "the baseline won" in printed
    else:
        margin = ranking.margin_over(trials, winner, baseline)
        assert f"the baseline at {budgets[margin.rung]} epoch" in printed
        assert f"(trial {margin.other.number}, {margin.other.value:.4f}" in printed
    complete = [t for t in trials if t.state == TrialState.COMPLETE and asha.was_needed(t)]
    promotions = sum(1 for t in complete if asha.is_promotion(t))
    done = f"4/4 configurations done ({len(complete)} trials: 4 first rungs, {promotions} promotions)"
    assert done in printed, printed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_promotion_killed_mid_rung_is_retried_from_its_checkpoint(sweep_setup):
    """SIGKILL to the whole study while a promotion trains: the rerun retries the promotion from
    the configuration's last checkpoint and gets the same numbers as the killed attempt."""
    tmp_path, overrides = sweep_setup
    overrides += [*ASHA, "study.n_trials=4", *LONG_PROMOTIONS]

    crashed = start_in_own_session(overrides, tmp_path)
    try:
        killed = wait_for(lambda: promotion_mid_rung(tmp_path), timeout=300, interval=0.2)
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait()
    command = sweep_command(overrides)
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    check_retried_from_its_checkpoint(tmp_path, killed, 4)


@pytest.mark.slow
def test_hyperband_brackets_and_two_workers_as_a_user_runs_them(sweep_setup):
    """`scheduler.brackets=2` from the shell with two workers: some configurations start at
    rung 1 (two epochs from scratch), and every invariant of one run per configuration holds."""
    tmp_path, overrides = sweep_setup
    overrides += [*ASHA, "scheduler.brackets=2", "study.n_workers=2", "study.n_trials=6"]
    done = subprocess.run(sweep_command(overrides), cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    study, client, runs = check_one_run_per_configuration(tmp_path, 6)
    assert len(runs) == 6
    trials = study.get_trials()
    assert asha.is_done(trials, 6, asha.Ladder((1, 2, 4), 2, brackets=2))
    firsts = [t for t in asha.first_segments(trials) if t.state == TrialState.COMPLETE]
    starts = {t.number: asha.rung_of(t) for t in firsts}
    # Hyperband's weights are 4:3 for rungs (1, 2, 4); spread evenly, 6 configurations get 3:3
    # (a configuration refused as surplus while others started may shift one).
    assert 2 <= list(starts.values()).count(1) <= 4 and starts[0] == 0, starts
    for trial in firsts:
        points = curve(client, trial.user_attrs["mlflow_run_id"])
        budget = (1, 2, 4)[asha.rung_of(trial)]
        assert trial.value == max(value for step, value in points if step <= budget)
        assert [step for step, _ in points][:budget] == list(range(1, budget + 1))
    # A bracket-1 configuration is ranked only against its own bracket: no rung-0 result of it.
    assert not [t for t in trials if starts.get(asha.config_of(t)) == 1 and asha.rung_of(t) == 0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_promotion_is_replaced_and_the_promotion_retried(sweep_setup):
    """Two workers; SIGKILL to the one training a promotion (the driver lives on): the driver
    starts a replacement, the promotion is retried from its checkpoint, and the study ends with
    one run per configuration and nothing left running."""
    tmp_path, overrides = sweep_setup
    overrides += [
        *ASHA,
        "study.n_workers=2",
        "study.n_trials=6",
        *LONG_PROMOTIONS,
    ]

    driver = subprocess.Popen(
        sweep_command(overrides), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        killed = wait_for(lambda: promotion_mid_rung(tmp_path), timeout=300, interval=0.2)
        os.kill(int(killed.user_attrs[WORKER_ATTR].rsplit(":", 1)[1]), signal.SIGKILL)
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output[-3000:]
    assert "starting a replacement" in output

    check_retried_from_its_checkpoint(tmp_path, killed, 6)
