"""What a run logs to MLflow: never a credential."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from study.config.checks import checked_config
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
