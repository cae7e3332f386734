"""Store calls wait out an outage for the window, with real errors: a PostgreSQL URL on a port
nothing listens on (refused at once), through SQLAlchemy and through Optuna's own wrapping."""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from optuna.storages._rdb.storage import _create_scoped_session
from sqlalchemy.orm import scoped_session, sessionmaker

from study.core.errors import short_error
from study.core.retry import StoreRetry, StoreUnreachableError, connection_error
from tests.helpers import free_port

PASSWORD = "pw-s3cret"


@pytest.fixture
def refused_url() -> str:
    return f"postgresql://study:{PASSWORD}@127.0.0.1:{free_port()}/optuna"


def connect(url: str):
    """What every store call does first; refused here."""

    def attempt():
        attempt.calls += 1
        with sqlalchemy.create_engine(url).connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT 1")).scalar()

    attempt.calls = 0
    return attempt


def optuna_query(url: str):
    """A query the way Optuna's RDBStorage makes it: the refused connection comes out as
    StorageInternalError, "invalid data in the commit", with the real error as its cause."""
    sessions = scoped_session(sessionmaker(bind=sqlalchemy.create_engine(url)))

    def attempt():
        with _create_scoped_session(sessions) as session:
            return session.execute(sqlalchemy.text("SELECT 1")).scalar()

    return attempt


def raising(error: BaseException):
    def attempt():
        attempt.calls += 1
        raise error

    attempt.calls = 0
    return attempt


def test_a_refused_connection_is_retried_for_the_window_then_named(refused_url):
    call = connect(refused_url)
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as caught:
        StoreRetry("study.storage", refused_url, window=2).call(call)
    assert 2 <= time.monotonic() - started < 4
    assert call.calls >= 3  # 0.5 s, then 1 s, then the rest of the window
    line = short_error(caught.value)
    assert f"study.storage postgresql://study:***@127.0.0.1:{refused_url.rsplit(':', 1)[1]}" in line
    assert "Connection refused" in line and "study.store_retry_seconds=2" in line
    assert PASSWORD not in line
    assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)


def test_optunas_invalid_data_message_gives_way_to_the_real_cause(refused_url):
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as caught:
        StoreRetry("study.storage", refused_url, window=0).call(optuna_query(refused_url))
    assert time.monotonic() - started < 1  # a window of 0: no retry
    assert "invalid data" in str(caught.value.__cause__)  # what Optuna says ...
    assert "invalid data" not in str(caught.value) and "Connection refused" in str(
        caught.value
    )  # ... and what was


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    ],
    ids=["admin-shutdown", "starting-up", "closed-by-server"],
)
def test_a_server_going_away_or_coming_back_is_unreachable(error):
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, error)
    assert connection_error(wrapped) is error


def test_a_lost_connection_that_mlflow_wrapped_without_from_is_unreachable():
    """MLflow's SqlAlchemyStore.log_batch raises MlflowException(e) inside `except`: the driver's
    error is only the exception's context (a CI run failed a trial on it during an outage)."""
    lost = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, lost)
        except Exception as error:
            raise MlflowException(error, INTERNAL_ERROR)  # noqa: B904 (as MLflow raises it)
    except MlflowException as wrapped:
        assert connection_error(wrapped) is lost
        try:
            raise RuntimeError("a new error") from None
        except RuntimeError as unrelated:
            assert connection_error(unrelated) is None  # `from None` hides the context


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.StringDataRightTruncation("value too long for type character varying(512)"),
        psycopg.errors.DiskFull("could not extend file: No space left on device"),
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
        sqlite3.OperationalError("database or disk is full"),
        sqlite3.OperationalError("database is locked"),
    ],
    ids=["too-long", "server-disk-full", "duplicate", "sqlite-full", "sqlite-locked"],
)
def test_data_and_disk_errors_are_raised_at_once(error):
    wrapped = sqlalchemy.exc.OperationalError("INSERT ...", {}, error)
    call = raising(wrapped)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        StoreRetry("study.storage", "postgresql://db/optuna", window=30).call(call)
    assert call.calls == 1


def test_a_real_sqlite_error_is_not_retried(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'x.db'}")

    def missing_table():
        missing_table.calls += 1
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT * FROM nowhere"))

    missing_table.calls = 0
    with pytest.raises(sqlalchemy.exc.OperationalError):
        StoreRetry("study.storage", "sqlite:///x.db", window=30).call(missing_table)
    assert missing_table.calls == 1


def test_nested_store_calls_do_not_multiply_the_window(refused_url):
    """RDBStorage's methods call one another: only the outermost call retries."""
    retry = StoreRetry("study.storage", refused_url, window=1.5)
    inner = connect(refused_url)
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError):
        retry.call(lambda: retry.call(inner))
    assert time.monotonic() - started < 3


def test_after_giving_up_calls_are_tried_once_until_one_gets_through(refused_url):
    retry = StoreRetry("study.storage", refused_url, window=1)
    with pytest.raises(StoreUnreachableError):
        retry.call(connect(refused_url))
    assert retry.given_up and retry.unreachable_within(5)
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError, match="gave up after 0 s"):
        retry.call(connect(refused_url))  # the session is ending: its clean-up does not wait again
    assert time.monotonic() - started < 1
    assert retry.call(lambda: 42) == 42 and not retry.given_up


def test_an_outage_is_seen_until_the_call_that_finds_the_store_back(refused_url):
    """Whoever judges a silence by this outage counts from the store's return, not from its own
    last refused call: another caller may have slept through that return in its back-off."""
    retry = StoreRetry("study.storage", refused_url, window=30)
    refused = connect(refused_url)

    def back_on_the_third_try():
        if refused.calls < 2:
            return refused()
        return 42

    assert retry.call(back_on_the_third_try) == 42
    assert time.monotonic() - retry.last_unreachable < 0.1  # the back-off slept 1.5 s in between
