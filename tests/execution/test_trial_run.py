"""A trial's MLflow run from start to end: how the block ends decides the run's status and its
`optuna.trial.state` tag (the table in study/execution/trial_run.py), row by row."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from study.config.checks import checked_config
from study.core.names import ERROR_TAG, NOTE_TAG, STATE_TAG, WORKER_ATTR
from study.execution.fencing import TrialFence, TrialLost
from study.execution.recovery import end_abandoned_run, fail_trial
from study.execution.trial_run import TrialRun
from study.tracking.runs import RunTracker


class Boom(ValueError):
    pass


@pytest.fixture
def owned_trial(tmp_path):
    """A RUNNING trial of a real study, owned by this test, and its fence."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, "this-host:1")
    return study, trial, TrialFence.of(trial, "this-host:1", fresh_seconds=1.0)


@pytest.mark.parametrize(
    ("raised", "state", "status"),
    [
        (None, "COMPLETE", "FINISHED"),
        (optuna.TrialPruned("pruned after epoch 1 at val_accuracy 0.1000"), "PRUNED", "FINISHED"),
        (KeyboardInterrupt(), "FAIL", "KILLED"),
        (SystemExit(143), "FAIL", "KILLED"),
        (Boom("a bad batch"), "FAIL", "FAILED"),
    ],
)
def test_how_the_block_ends_sets_state_and_status(make_config, owned_trial, raised, state, status):
    mlflow_cfg = checked_config(make_config()).mlflow
    parent = RunTracker.start(mlflow_cfg, run_name="parent")
    fence = owned_trial[2]
    trial_run = TrialRun.start(
        mlflow_cfg, run_name="trial", tags={}, parent_run_id=parent.run_id, fence=fence
    )
    client = MlflowClient(mlflow_cfg.tracking_uri)
    assert client.get_run(trial_run.run_id).data.tags[STATE_TAG] == "RUNNING"
    try:
        with trial_run:
            if raised is not None:
                raise raised
    except BaseException as error:
        assert error is raised
    run = client.get_run(trial_run.run_id)
    assert (run.data.tags[STATE_TAG], run.info.status) == (state, status)
    if isinstance(raised, optuna.TrialPruned):
        assert run.data.tags[NOTE_TAG] == str(raised)
    if isinstance(raised, Boom):
        assert "a bad batch" in run.data.tags[ERROR_TAG]
    if isinstance(raised, KeyboardInterrupt | SystemExit):
        assert "retried" in run.data.tags[ERROR_TAG]
    parent.end("FINISHED")


def test_a_trial_failed_by_another_process_gets_no_more_writes(make_config, owned_trial):
    """The worker was silent; recovery failed its trial and ended the run KILLED. Its next
    write stops the trial, and leaves the run (status, tags, metrics) as recovery left it."""
    study, trial, fence = owned_trial
    mlflow_cfg = checked_config(make_config()).mlflow
    parent = RunTracker.start(mlflow_cfg, run_name="parent")
    trial_run = TrialRun.start(
        mlflow_cfg, run_name="trial", tags={}, parent_run_id=parent.run_id, fence=fence
    )
    client = MlflowClient(mlflow_cfg.tracking_uri)
    with pytest.raises(TrialLost, match="FAIL"), trial_run as tracker:
        tracker.log_metrics({"val_accuracy": 0.5}, step=1)
        tracker.flush()
        frozen = study._storage.get_trial(trial._trial_id)
        assert fail_trial(study, frozen, "its worker is gone")  # what recovery does
        end_abandoned_run(client, trial_run.run_id, optuna.trial.TrialState.FAIL, "worker gone")
        tracker.log_metrics({"val_accuracy": 0.9}, step=2)
    run = client.get_run(trial_run.run_id)
    assert (run.data.tags[STATE_TAG], run.info.status) == ("FAIL", "KILLED")
    assert run.data.tags[ERROR_TAG] == "worker gone"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0.5]


def test_a_trial_taken_over_by_another_worker_is_lost(owned_trial):
    study, trial, fence = owned_trial
    fence.check()
    study._storage.set_trial_user_attr(trial._trial_id, WORKER_ATTR, "other-host:2")
    with pytest.raises(TrialLost, match="other-host:2"):
        fence.check()
