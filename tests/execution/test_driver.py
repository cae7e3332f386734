"""Studies end to end: trials, pruning, failures, MLflow nesting, resume after SIGKILL, workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from study import report, reproduce
from study.config.checks import checked_sweep_config
from study.core.errors import ConfigError
from study.core.names import WORKER_ATTR
from study.execution.driver import StudyIncompleteError, run_sweep
from study.search.pruners import build_pruner
from study.search.samplers import build_sampler
from study.search.space import SearchSpace
from tests.helpers import (
    all_runs,
    compose_config,
    load,
    start_in_own_session,
    stores,
    sweep_command,
    wait_for,
)


def test_tiny_study_tracks_prunes_fails_and_resumes(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += ["pruner=threshold", "pruner.lower=0.2", "study.n_trials=3"]
    storage = f"sqlite:///{tmp_path / 'runs'}/optuna.db"
    (tmp_path / "runs").mkdir()
    # Trials are taken in this order: one that diverges, one too slow to pass the threshold.
    seeded = optuna.create_study(study_name="default", storage=storage, direction="maximize")
    seeded.enqueue_trial(
        {"model": "mlp", "optimizer": "sgd", "optimizer.learning_rate": 1e30, "model.dropout_rate": 0.0}
    )
    seeded.enqueue_trial({"model": "softmax", "optimizer": "sgd", "optimizer.learning_rate": 1e-7})
    seeded.enqueue_trial(
        {"model": "mlp", "optimizer": "adam", "optimizer.learning_rate": 0.01, "model.dropout_rate": 0.0}
    )

    summary = run_sweep(compose_config("sweep", overrides), overrides)

    study = load(tmp_path)
    states = [trial.state for trial in study.trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 3
    assert states[:3] == [TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE]
    assert "NonFiniteLossError: train_loss is nan" in study.trials[0].user_attrs["fail_reason"]

    _, client = stores(tmp_path)
    runs = all_runs(client)
    parents = [run for run in runs if run.data.tags.get("study.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    children = {run.info.run_id: run for run in runs if run is not parent}
    assert len(children) == len(study.trials)
    expected_status = {
        TrialState.COMPLETE: "FINISHED",
        TrialState.PRUNED: "FINISHED",  # pruning is a decision, not a failure
        TrialState.FAIL: "FAILED",
    }
    for trial in study.trials:
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.trial.number"] == str(trial.number)
        assert child.data.tags["optuna.trial.state"] == trial.state.name
        assert child.info.status == expected_status[trial.state]
    pruned = children[study.trials[1].user_attrs["mlflow_run_id"]]
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [1]
    assert "error" not in pruned.data.tags
    assert pruned.data.tags["mlflow.note.content"].startswith("pruned after epoch 1")
    failed = children[study.trials[0].user_attrs["mlflow_run_id"]]
    assert failed.data.tags["error"].startswith("NonFiniteLossError")
    assert len(failed.data.tags["error"]) <= 300 and "\n" not in failed.data.tags["error"]
    error_file = client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))
    assert "Traceback" in Path(error_file).read_text()  # the whole story, beside the short tag
    assert not any(run.info.status == "RUNNING" for run in runs)

    # The parent carries the summary: winner on the test set, leaderboard, plots, search space.
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert summary["best_trial"] == study.best_trial.number
    assert parent.data.metrics["best_trial_test_accuracy"] == pytest.approx(
        summary["best_trial_test_accuracy"]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "search_space.yaml", "confusion_matrix.png", "plots"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"optimization_history.png", "intermediate_values.png"} <= plots
    study_dir = tmp_path / "runs" / "studies" / "default"
    board = (study_dir / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("trial,state,val_accuracy,test_accuracy,epochs,duration_s,")
    assert board[0].endswith(",error,run_id") and "optimizer.learning_rate" in board[0]
    assert len(board) == 1 + len(study.trials)

    # TensorBoard: one folder per trial with its curves and its HParams session.
    trial_dir = study_dir / "tensorboard" / "trial_0002"
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    assert len(events.Scalars("accuracy/validation")) == 2
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    # Running the command again with a larger budget resumes: same parent, one more trial.
    more = [*overrides[:-1], "study.n_trials=4"]
    run_sweep(compose_config("sweep", more), more)
    study = load(tmp_path)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
    parents = [run for run in all_runs(client) if run.data.tags.get("study.role") == "parent"]
    assert [run.info.run_id for run in parents] == [parent.info.run_id]
    assert not any(run.info.status == "RUNNING" for run in all_runs(client))

    # The winning trial reproduces from its run id alone.
    uri = f"sqlite:///{tmp_path / 'runs'}/mlflow.db"
    winner = study.best_trial.user_attrs["mlflow_run_id"]
    assert reproduce.main([winner, "--tracking-uri", uri]) == 0

    # study.report: the study's leaderboard, then beside a second study.
    reports = tmp_path / "reports"
    assert (
        report.main(["--study", "default", "--tracking-uri", uri, "--output-dir", str(reports), "--markdown"])
        == 0
    )
    board = pd.read_csv(reports / "default.csv")
    tracked = [t for t in study.trials if "mlflow_run_id" in t.user_attrs]
    assert sorted(board["trial"]) == sorted(t.number for t in tracked)
    assert dict(zip(board["trial"], board["state"], strict=True)) == {t.number: t.state.name for t in tracked}
    assert board.loc[board["run_id"] == winner, "test_accuracy"].notna().all()
    assert board["test_accuracy"].notna().sum() == 1  # only the winner met the test set
    assert (reports / "default.md").read_text().startswith("| study ")
    other = [*overrides[:-1], "study.n_trials=1", "study.name=other"]
    run_sweep(compose_config("sweep", other), other)
    assert (
        report.main(
            ["--study", "default", "--study", "other", "--tracking-uri", uri, "--output-dir", str(reports)]
        )
        == 0
    )
    both = pd.read_csv(reports / "default_vs_other.csv")
    assert set(both["study"]) == {"default", "other"}
    assert report.main(["--experiment", "study", "--tracking-uri", uri, "--output-dir", str(reports)]) == 0
    assert len(pd.read_csv(reports / "study.csv")) == len(all_runs(client))


def test_malformed_search_space_fails_before_any_store(sweep_setup):
    tmp_path, overrides = sweep_setup
    bad = tmp_path / "conf" / "search_space" / "tiny.yaml"
    learning_rate = "optimizer.learning_rate: {type: float"
    cases = {
        "model: {type: categorical, choices: [softmax, cnn2]}": "search_space.model: model='cnn2'",
        f"{learning_rate}, low: 0.1, high: 0.01}}": "expected low <= high",
        f"{learning_rate}, low: 0.0, high: 0.1, log: true}}": "expected > 0 with log",
        "model.dropuot_rate: {type: float, low: 0.0, high: 0.5}": "search_space.model.dropuot_rate",
        "model.dropout_rate: {type: float, low: 0.0, high: 1.5}": "model.dropout_rate: expected a number in",
        "optimizer: {type: uniform, choices: [sgd]}": "search_space.optimizer.type: expected one of",
        # dense_units exists for the CNN only: the MLP option of the searched group breaks it.
        "model: {type: categorical, choices: [cnn, mlp]}\nmodel.dense_units: {type: int, low: 8, high: 16}": (
            "search_space.model.dense_units: model.dense_units=8 does not make a valid config"
        ),
    }
    for text, expected in cases.items():
        bad.write_text(text + "\n")
        with pytest.raises(ConfigError) as caught:
            run_sweep(compose_config("sweep", overrides), overrides)
        assert expected in str(caught.value), text
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def trial_states(tmp_path):
    return [trial.state for trial in trials_so_far(tmp_path)]


def trials_so_far(tmp_path):
    try:
        return load(tmp_path).trials
    except Exception:  # the study does not exist yet
        return []


def running_with_a_run(tmp_path):
    """A RUNNING trial whose MLflow run is already recorded, after at least one trial finished."""
    trials = trials_so_far(tmp_path)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return next((t for t in running if "mlflow_run_id" in t.user_attrs), None)


def test_sigkill_mid_study_then_resume_finishes_exactly_n_trials(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=4", "pruner=none", "trainer.epochs=4"]
    crashed = start_in_own_session(overrides, tmp_path)
    try:
        # Killed mid-training, its MLflow run open. A kill before the run is recorded (the
        # ask-to-owner window) is tests/e2e/test_crash_safety.py's case.
        wait_for(lambda: running_with_a_run(tmp_path))
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)  # the whole machine goes down: driver and workers
        crashed.wait()
    killed = next(t for t in load(tmp_path).trials if t.state == TrialState.RUNNING)
    assert "mlflow_run_id" in killed.user_attrs

    resumed = subprocess.run(
        sweep_command(overrides), cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    study = load(tmp_path)
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) == len(set(numbers))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [
        t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number
    ]
    assert len(retries) == 1 and retries[0].params == killed.params
    _, client = stores(tmp_path)
    runs = all_runs(client)
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"]
    killed_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED"
    assert "worker gone" in killed_run.data.tags["error"]
    assert killed_run.data.tags["optuna.trial.state"] == "FAIL"
    assert len([run for run in runs if run.data.tags.get("study.role") == "parent"]) == 1


def test_two_workers_share_the_study(sweep_setup):
    tmp_path, overrides = sweep_setup
    # Trials long enough that the second worker is up (TensorFlow imported) before the first
    # worker could have taken them all, even on a busy 2-core machine.
    overrides += ["study.n_trials=4", "study.n_workers=2", "pruner=none", "trainer.epochs=12"]
    done = subprocess.run(sweep_command(overrides), cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(tmp_path)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    assert len({t.number for t in study.trials}) == len(study.trials)
    workers = {t.user_attrs[WORKER_ATTR] for t in finished}
    assert len(workers) == 2, f"both workers should have taken trials, not only {workers}"
    logs = sorted(p.name for p in (tmp_path / "runs" / "studies" / "default" / "logs").glob("*.log"))
    assert logs == ["worker_0.log", "worker_1.log"]
    _, client = stores(tmp_path)
    assert not any(run.info.status == "RUNNING" for run in all_runs(client))


def test_ctrl_c_leaves_no_run_running(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=50", "pruner=none", "trainer.epochs=20"]
    interrupted = start_in_own_session(overrides, tmp_path)
    wait_for(lambda: TrialState.RUNNING in trial_states(tmp_path))
    time.sleep(2)  # well inside the trial's training
    os.killpg(interrupted.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    interrupted.wait(timeout=120)
    assert interrupted.returncode != 0
    _, client = stores(tmp_path)
    runs = all_runs(client)
    assert runs and not [run.info.run_id for run in runs if run.info.status == "RUNNING"]
    assert TrialState.RUNNING not in trial_states(tmp_path)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "gp"])
@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive_halving", "threshold", "none"])
def test_every_sampler_and_pruner_composes_and_builds(sampler, pruner, tmp_path):
    overrides = [f"sampler={sampler}", f"pruner={pruner}", "scheduler=none", "search_space=cnn_only"]
    cfg = compose_config("sweep", overrides)
    settings = checked_sweep_config(cfg)
    space = SearchSpace(settings.search_space)
    build_pruner(settings.pruner)
    if sampler == "grid":
        with pytest.raises(ConfigError, match="sampler=grid needs choices or a step"):
            build_sampler(settings.sampler, space)
    elif sampler == "gp" and not _has_torch():
        with pytest.raises(ConfigError, match="sampler=gp: needs PyTorch"):
            build_sampler(settings.sampler, space)
    else:
        build_sampler(settings.sampler, space)


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_too_many_failures_end_the_session_with_an_error(sweep_setup):
    tmp_path, overrides = sweep_setup
    overrides += ["study.n_trials=2", "study.max_failed_trials=1", "pruner=none"]
    (tmp_path / "runs").mkdir()
    storage = f"sqlite:///{tmp_path / 'runs'}/optuna.db"
    seeded = optuna.create_study(study_name="default", storage=storage, direction="maximize")
    seeded.enqueue_trial(
        {"model": "mlp", "optimizer": "sgd", "optimizer.learning_rate": 1e30, "model.dropout_rate": 0.0}
    )
    with pytest.raises(
        StudyIncompleteError,
        match=r"0 of 2 trials done: 1 trials failed in this session \(study.max_failed_trials\)",
    ):
        run_sweep(compose_config("sweep", overrides), overrides)
    _, client = stores(tmp_path)
    (parent,) = [run for run in all_runs(client) if run.data.tags.get("study.role") == "parent"]
    assert parent.info.status == "FAILED"
    assert "StudyIncompleteError" in parent.data.tags["error"]
