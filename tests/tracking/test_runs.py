"""What a run logs to MLflow: never a credential; in an experiment that says it is model training."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from study.config.checks import checked_config
from study.core.names import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from study.tracking.runs import get_or_create_experiment
from study.training.run import train


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


def test_the_experiment_says_it_is_model_training(make_config):
    """Made by a run, or made before (by an older version, by hand) and opened by one: the
    experiment's kind is model training, unless its owner chose another."""
    mlflow_cfg = checked_config(make_config()).mlflow
    client = MlflowClient(tracking_uri=mlflow_cfg.tracking_uri)
    made = client.get_experiment(get_or_create_experiment(client, mlflow_cfg))
    assert made.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    client.delete_experiment_tag(made.experiment_id, EXPERIMENT_KIND_TAG)  # an experiment from before
    assert get_or_create_experiment(client, mlflow_cfg) == made.experiment_id
    assert client.get_experiment(made.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    client.set_experiment_tag(made.experiment_id, EXPERIMENT_KIND_TAG, "genai_development")  # the owner's
    get_or_create_experiment(client, mlflow_cfg)
    assert client.get_experiment(made.experiment_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"
