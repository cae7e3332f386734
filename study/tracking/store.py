"""Opening the MLflow tracking store: a SQLite store is created and migrated by one process at
a time (study.core.sqlite_files), so runs that start together on a new store all get going."""

from __future__ import annotations

import sqlite3
import time

from mlflow import MlflowClient

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
