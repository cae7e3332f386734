"""Credentials are masked in everything logged."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from study.config.schema import checked_config
from study.tracking.runs import mask_secrets
from study.training.run import train


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://study:s3cret@db:5432/optuna", "postgresql://study:***@db:5432/optuna"),
        ("http://alice:pa:ss@mlflow:5000", "http://alice:***@mlflow:5000"),
        ("mysql+pymysql://root@db/optuna", "mysql+pymysql://root@db/optuna"),
        ("redis://cache:6379/0?password=abc&db=1", "redis://cache:6379/0?password=***&db=1"),
        ("sqlite:///runs/optuna.db", "sqlite:///runs/optuna.db"),
        ("postgresql://user:p@ss@db-host/optuna", "postgresql://user:***@db-host/optuna"),
        ("s3://bucket/key?token=xyz", "s3://bucket/key?token=***"),
    ],
)
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_credentials_in_the_config_never_reach_mlflow(make_config, tmp_path):
    url = "postgresql://study:s3cret@db-host/optuna"
    cfg = make_config(f"+mlflow.tags.storage='{url}'", "data.max_train_samples=64", model="softmax")
    train(cfg)
    client = MlflowClient(tracking_uri=checked_config(cfg).mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.data.tags["storage"] == "postgresql://study:***@db-host/optuna"
    assert run.data.params["mlflow.tags.storage"] == "postgresql://study:***@db-host/optuna"
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    text = Path(config).read_text()
    assert "s3cret" not in text and "study:***@db-host" in text


def test_drivers_finishing_one_study_together_register_its_winner_once(tmp_path):
    """Two drivers that share a study see it done at the same moment and each register the
    winner. Here the other driver registered it a moment ago and has not tagged the run yet:
    this driver's version is dropped and both name the first one."""
    import keras
    import numpy as np

    from study.tracking.lineage import log_keras_model
    from study.core.names import CHECKPOINT_TAG, MODEL_URI_TAG
    from study.reporting.plots import log_winner_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    images = np.random.default_rng(0).random((8, 4), dtype=np.float32)

    def versions() -> list[str]:
        return sorted(str(version.version) for version in client.search_model_versions("name = 'winner'"))

    log_keras_model(uri, run_id, model, images, "winner", {CHECKPOINT_TAG: "aaa"})  # the other driver
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == ("models:/winner/1", False)
    assert versions() == ["1"]
    assert client.get_run(run_id).data.tags[MODEL_URI_TAG] == "models:/winner/1"
    logged = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(logged) == 1  # this driver's copy is gone with its version

    # A resumed study whose winner and checkpoint did not change logs nothing new.
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == ("models:/winner/1", False)
    # A promotion improved the winner's checkpoint: a new version, this driver's to describe.
    assert log_winner_model(client, run_id, model, "bbb", images, "winner") == ("models:/winner/3", True)
    assert versions() == ["1", "3"]
    assert client.get_model_version("winner", "3").tags[CHECKPOINT_TAG] == "bbb"


def test_one_winner_per_study_when_a_resumed_study_crowns_another_trial(tmp_path):
    from study.core.names import BEST_RUN_TAG, WINNER_TAG
    from study.reporting.plots import crown

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    parent, first, second = (client.create_run(experiment_id).info.run_id for _ in range(3))

    crown(client, parent, first)
    client.set_tag(parent, BEST_RUN_TAG, first)  # what the first session's finish leaves
    crown(client, parent, second)  # a resumed session: another trial won
    crown(client, parent, second)  # a second driver of that session: the tag is gone already

    winners = client.search_runs([experiment_id], filter_string=f"tags.`{WINNER_TAG}` = 'true'")
    assert [run.info.run_id for run in winners] == [second]
