"""Credentials are masked in everything logged."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from study.config import checked_config
from study.tracking import mask_secrets
from study.train import train


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
