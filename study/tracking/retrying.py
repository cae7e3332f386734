"""MLflow calls that wait out an outage of the tracking store (study.core.retry).

MLflow's SQL store (postgresql://, mysql://, sqlite:///) raises a refused or dropped connection
as MlflowException(TEMPORARILY_UNAVAILABLE) and gives up: `RetryingClient` retries it for the
window. A tracking server (http://) retries its requests itself, with back-off, for about four
minutes by default (MLFLOW_HTTP_REQUEST_MAX_RETRIES): `cover_http_outages` only makes sure a
longer window is covered too, so the client never retries on top of the server's retries.
"""

from __future__ import annotations

import functools
import os

from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

from study.core.retry import StoreRetry, store_retry

STORE_KEY = "mlflow.tracking_uri"
HTTP_BACKOFF_MAX_SECONDS = 120  # urllib3's cap on one wait between retries


class RetryingClient:
    """An MlflowClient whose calls retry while the tracking store is unreachable."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self.store_retry: StoreRetry = store_retry(STORE_KEY, client.tracking_uri)

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return functools.partial(self.store_retry.call, attribute)


def retrying(client: MlflowClient | RetryingClient) -> RetryingClient:
    return client if isinstance(client, RetryingClient) else RetryingClient(client)


def cover_http_outages(window: float) -> None:
    """Enough HTTP retries to last `window` seconds, unless the user chose how many.

    urllib3 waits 0, then factor * 2**(n-1) seconds before the n-th retry, at most 120."""
    if MLFLOW_HTTP_REQUEST_MAX_RETRIES.name in os.environ:
        return
    factor = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    retries, waited = 1, 0.0
    while waited < window and factor > 0:
        retries += 1
        waited += min(HTTP_BACKOFF_MAX_SECONDS, factor * 2 ** (retries - 1))
    if retries > MLFLOW_HTTP_REQUEST_MAX_RETRIES.get():
        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = str(retries)
