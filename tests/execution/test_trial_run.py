"""A trial's MLflow run from start to end: how the block ends decides the run's status and its
`optuna.trial.state` tag (the table in study/execution/trial_run.py), row by row."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from study.config.checks import checked_config
from study.core.names import ERROR_TAG, NOTE_TAG, STATE_TAG
from study.execution.trial_run import TrialRun
from study.tracking.runs import RunTracker


class Boom(ValueError):
    pass


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
def test_how_the_block_ends_sets_state_and_status(make_config, raised, state, status):
    mlflow_cfg = checked_config(make_config()).mlflow
    parent = RunTracker.start(mlflow_cfg, run_name="parent")
    trial_run = TrialRun.start(mlflow_cfg, run_name="trial", tags={}, parent_run_id=parent.run_id)
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
