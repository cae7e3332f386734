"""A study that confirms its best configurations (study.confirm_top, study.confirm_seeds), run
as a user runs it, twice: the confirmation runs, the means on the runs and the parent, the
winner chosen on the mean, and a second run of the same command that trains nothing again."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from study.core.names import (
    BEST_RUN_TAG,
    CONFIRM_MEAN_METRIC,
    CONFIRM_SEEDS_METRIC,
    CONFIRM_STD_METRIC,
    CONFIRM_TRIAL_METRIC,
    CONFIRMATION_OF_TAG,
    CONFIRMATION_SEED_TAG,
    CONFIRMATION_TRIAL_TAG,
    MLFLOW_RUN_ATTR,
    STUDY_ROLE_TAG,
    WINNER_TAG,
)
from study.search.ranking import ranked_configurations
from study.training.replay import mean_and_std
from tests.helpers import all_runs, load, run_command

OVERRIDES = [
    "data=digits",
    "model=mlp",
    "search_space=learning_rate",
    "study.n_trials=3",
    "trainer.epochs=2",
    "study.registered_model=null",
    "study.confirm_top=2",
    "study.confirm_seeds=2",
]


@pytest.mark.slow
def test_the_best_configurations_are_confirmed_and_the_winner_is_the_best_mean(tmp_path):
    done = run_command("sweep", *OVERRIDES, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = all_runs(client)
    (parent,) = [run for run in runs if run.data.tags.get(STUDY_ROLE_TAG) == "parent"]
    confirming = [run for run in runs if CONFIRMATION_OF_TAG in run.data.tags]
    assert len(confirming) == 4  # 2 configurations x 2 seeds
    assert {run.info.status for run in confirming} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in confirming} == {parent.info.run_id}

    configurations = ranked_configurations(load(tmp_path).get_trials())[:2]  # the single-seed order
    means = {}
    for trial in configurations:
        run_id = trial.user_attrs[MLFLOW_RUN_ATTR]
        own = [run for run in confirming if run.data.tags[CONFIRMATION_OF_TAG] == run_id]
        assert sorted(run.data.tags[CONFIRMATION_SEED_TAG] for run in own) == ["43", "44"]
        assert {run.data.tags[CONFIRMATION_TRIAL_TAG] for run in own} == {str(trial.number)}
        mean, std = mean_and_std([trial.value, *(run.data.metrics["best_val_accuracy"] for run in own)])
        metrics = client.get_run(run_id).data.metrics
        assert metrics[CONFIRM_MEAN_METRIC] == pytest.approx(mean)
        assert metrics[CONFIRM_STD_METRIC] == pytest.approx(std)
        assert metrics[CONFIRM_SEEDS_METRIC] == 3
        assert parent.data.metrics[
            CONFIRM_TRIAL_METRIC.format(number=trial.number, stat="mean")
        ] == pytest.approx(mean)
        means[run_id] = mean

    best_mean = max(means, key=means.get)
    assert parent.data.tags[BEST_RUN_TAG] == best_mean
    assert client.get_run(best_mean).data.tags[WINNER_TAG] == "true"
    assert parent.data.metrics[CONFIRM_MEAN_METRIC] == pytest.approx(means[best_mean])
    assert "winner mean" in done.stdout and "over 3 seeds; runner-up" in done.stdout

    again = run_command("sweep", *OVERRIDES, cwd=tmp_path)  # the same command: nothing trains again
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(2 seeds trained earlier)") == 2
    assert len([run for run in all_runs(client) if CONFIRMATION_OF_TAG in run.data.tags]) == 4
    assert client.get_run(parent.info.run_id).data.tags[BEST_RUN_TAG] == best_mean
