"""MLflow calls that wait out an outage of the tracking store: MLflow's own SQL store code on a
PostgreSQL port nothing listens on, a real SQLite store, and the HTTP client's retries."""

from __future__ import annotations

import os

import pytest
import sqlalchemy
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_managed_session_maker
from omegaconf import OmegaConf
from sqlalchemy.orm import sessionmaker

from study.core.retry import StoreRetry, StoreUnreachableError, connection_error
from study.tracking.retrying import RetryingClient, cover_http_outages, retrying
from study.tracking.runs import RunTracker
from tests.helpers import free_port


def test_mlflows_temporarily_unavailable_is_recognised_and_named():
    url = f"postgresql://study:pw-s3cret@127.0.0.1:{free_port()}/mlflow"
    sessions = _get_managed_session_maker(sessionmaker(bind=sqlalchemy.create_engine(url)), "postgresql")

    def query():
        with sessions() as session:
            session.execute(sqlalchemy.text("SELECT 1"))

    with pytest.raises(MlflowException) as raised:
        query()
    assert connection_error(raised.value) is not None  # MLflow's wrapping, the driver's error inside
    with pytest.raises(
        StoreUnreachableError, match=r"mlflow.tracking_uri postgresql://study:\*\*\*@.*Connection refused"
    ):
        StoreRetry("mlflow.tracking_uri", url, window=0).call(query)


def test_a_run_tracker_logs_through_the_retrying_client(tmp_path):
    mlflow_cfg = OmegaConf.create(
        {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment_name": "e",
            "artifact_location": None,
        }
    )
    with RunTracker.start(mlflow_cfg, run_name="r") as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 0.5}, step=1)
    assert isinstance(tracker.client, RetryingClient) and retrying(tracker.client) is tracker.client
    assert tracker.client.tracking_uri == mlflow_cfg.tracking_uri
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"} and run.data.metrics == {"m": 0.5}


@pytest.mark.parametrize(("window", "retries"), [(0, None), (60, None), (244, None), (300, "8"), (600, "10")])
def test_a_tracking_servers_retries_last_the_window(monkeypatch, window, retries):
    """MLflow's client waits 0, 4, 8, ... 120 s between retries (7 retries: about 4 minutes)."""
    monkeypatch.delenv(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    cover_http_outages(window)
    assert os.environ.get(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name) == retries


def test_the_users_http_retries_are_kept(monkeypatch):
    monkeypatch.setenv(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, "2")
    cover_http_outages(600)
    assert os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] == "2"
