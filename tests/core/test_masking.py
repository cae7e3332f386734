"""Credentials in URLs are masked, whatever the URL."""

from __future__ import annotations

import pytest

from study.core.masking import mask_secrets


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
