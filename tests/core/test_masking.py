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
        # Generated passwords: "/", "+", an encoded "/" and "@", up to the last "@" before the host.
        ("postgresql://u:pa/ss+w%2Frd@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),
        ("postgresql://u:a/b@c@db/optuna", "postgresql://u:***@db/optuna"),
        ("storage='postgresql://u:a/b@db/x'", "storage='postgresql://u:***@db/x'"),
        # Hydra's escapes (`-m` prints and saves the overrides so), URL-encoding, DSN forms.
        ("s=postgresql\\://u\\:p/w\\=x@db\\:5432/o", "s=postgresql\\://u\\:***@db\\:5432/o"),
        ("next=http%3A%2F%2Fu%3Ap%2Fw%40host%2Fx", "next=http%3A%2F%2Fu%3A***%40host%2Fx"),
        ("host=db password=p/w+x user=u", "host=db password=*** user=u"),
        ("password\\=p/w", "password\\=***"),
        # Two URLs in one word (Hydra's override_dirname): each keeps its own host.
        (
            "a=postgresql://u:p/w@db/o,b=http://v:q@mlflow:5000",
            "a=postgresql://u:***@db/o,b=http://v:***@mlflow:5000",
        ),
        ("http://alice@mlflow:5000/x", "http://alice@mlflow:5000/x"),
    ],
)
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_mask_secrets_is_idempotent():
    once = mask_secrets("postgresql://u:pa/ss+w%2Frd@db/o")
    assert mask_secrets(once) == once
