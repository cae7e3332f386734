"""Opening the MLflow store: a new SQLite store is made once, and a locked file is recognised."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import sqlalchemy
from mlflow.exceptions import MlflowException

from study.tracking.store import database_locked, open_client


def test_a_new_sqlite_store_is_made_under_the_lock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    assert client.get_experiment_by_name("Default") is not None  # MLflow's tables are there
    assert (tmp_path / "mlflow.db.lock").exists()
    assert open_client(uri).tracking_uri == uri  # opened before: no second look


def test_a_store_in_a_new_folder_is_locked_there_too(tmp_path):
    open_client(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert sorted(path.name for path in (tmp_path / "new").iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_an_unusable_path_is_left_to_mlflow(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FileExistsError):  # MLflow's own, as without the lock
        open_client(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")


def locked_error(tmp_path) -> sqlalchemy.exc.OperationalError:
    """SQLite's own error for a file another connection writes, as SQLAlchemy raises it."""
    path = tmp_path / "locked.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with contextlib.closing(sqlite3.connect(path)) as writer:
        writer.execute("CREATE TABLE t (x)")
        writer.commit()
        writer.execute("BEGIN EXCLUSIVE")
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT * FROM t"))
        except sqlalchemy.exc.OperationalError as error:
            return error
    raise AssertionError("the file was not locked")


def test_a_locked_file_is_recognised_through_mlflows_wrapping(tmp_path):
    error = locked_error(tmp_path)
    try:
        raise MlflowException(str(error)) from error  # as MLflow's SQL store raises it
    except MlflowException as wrapped:
        assert database_locked(wrapped)


def test_other_database_errors_are_not_a_locked_file():
    assert not database_locked(sqlite3.OperationalError("table _alembic_tmp_metrics already exists"))
    assert not database_locked(None)
