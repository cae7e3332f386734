"""Opening the MLflow tracking store: checked before anything is written there (bad input is one
line), and a SQLite store created and migrated by one process at a time
(study.core.sqlite_files), so runs that start together on a new store all get going."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient
from omegaconf import DictConfig

from study.config.probes import foreign_store_problem
from study.core.errors import ConfigError, error_line
from study.core.masking import mask_secrets
from study.core.sqlite_files import creation_lock, sqlite_file

# MLflow's SQL sessions wait 20 s for a SQLite file that another process writes, but the checks
# it runs when it opens a store (tables, schema version) give up after SQLite's 5 s, with
# "database is locked": other runs logging at that moment is no reason for a run to fail.
LOCKED_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)

_opened: set[str] = set()  # SQLite stores this process has opened: MLflow keeps them open


def open_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient whose store, if SQLite, has its tables made and migrated."""
    database = sqlite_file(tracking_uri)
    if database is None or tracking_uri in _opened:
        return MlflowClient(tracking_uri=tracking_uri)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)  # MLflow would make it: the lock goes there
    except OSError:
        return MlflowClient(tracking_uri=tracking_uri)  # an unusable path: MLflow's error names it
    with creation_lock(database):
        # The first client builds the store: MLflow creates or migrates its tables there and
        # keeps the store for the rest of the process.
        client = _first_client(tracking_uri)
    _opened.add(tracking_uri)
    return client


def _first_client(tracking_uri: str) -> MlflowClient:
    for delay in LOCKED_RETRY_DELAYS:
        try:
            return MlflowClient(tracking_uri=tracking_uri)
        except Exception as error:  # SQLite rolled the failed statement back: trying again is safe
            if not database_locked(error):
                raise
            time.sleep(delay)
    return MlflowClient(tracking_uri=tracking_uri)


def database_locked(error: BaseException | None) -> bool:
    """Whether SQLite's "database is locked" is in the chain of `error` (MLflow and SQLAlchemy
    each wrap it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.OperationalError) and "database is locked" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


CHECK_RETRIES = "1"  # a start-up check fails fast; MLflow's own retries are for runs in flight


def check_readable(uri: str, key: str = "mlflow.tracking_uri") -> None:
    """For commands that read runs (study.report): an unreachable store is one line at once,
    not MLflow's retries for minutes and then a traceback."""
    try:
        connect_once(uri)
        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES=CHECK_RETRIES):
            open_client(uri).search_experiments(max_results=1)
    except Exception as error:
        raise ConfigError(f"{key}: cannot use {mask_secrets(uri)}: {error_line(error)}") from error


def check_tracking_store(mlflow_cfg: DictConfig) -> None:
    """Read the run's experiment from the tracking store, before anything is written there.

    An unreachable or unusable store, or an experiment that was deleted (MLflow refuses new
    runs in it), raises ConfigError naming the key.
    """
    uri = mlflow_cfg.tracking_uri
    if missing_local_store(uri) is not None:
        return  # a new local store: nothing to read, and nothing is written before the run
    try:
        connect_once(uri)
        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES=CHECK_RETRIES):
            experiment = open_client(uri).get_experiment_by_name(mlflow_cfg.experiment_name)
    except ConfigError:
        raise
    except Exception as error:
        where = mask_secrets(uri)
        raise ConfigError(f"mlflow.tracking_uri: cannot use {where}: {error_line(error)}") from error
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"mlflow.experiment_name: experiment {mlflow_cfg.experiment_name!r} is deleted in "
            f"{mask_secrets(uri)}; restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}) or pick another name"
        )


SERVER_DATABASES = ("postgresql", "mysql", "mssql")
CONNECT_TIMEOUT_SECONDS = 10


def connect_once(uri: str, key: str = "mlflow.tracking_uri", expected: str = "MLflow") -> None:
    """One connection to a database server, before MLflow's (or Optuna's) own store opens it:
    MLflow retries a refused connection or a wrong password for about 100 s before it says
    why, and either tool writes its tables into the other's database before it refuses it."""
    if uri.split(":", 1)[0].split("+", 1)[0] not in SERVER_DATABASES:
        return
    import sqlalchemy

    timeout = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if uri.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(uri, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
    finally:
        engine.dispose()
    problem = foreign_store_problem(tables, expected, mask_secrets(uri))
    if problem is not None:
        raise ConfigError(f"{key}: expected {problem}")


def missing_local_store(uri: str) -> str | None:
    """For a local store (sqlite:///file, file: or a folder) that does not exist: its path.

    Commands that only read runs refuse such a store instead of creating an empty one.
    """
    if uri == "databricks":  # a workspace, not a folder named so
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    elif parts.scheme == "file":
        path = parts.path
    elif not parts.scheme:
        path = uri
    else:
        return None
    return None if Path(path).exists() else path


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables for the block only, unless the user set them."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
