"""Optuna storage for a study, opened once per process, never silently replaced.

`study.storage` is an Optuna storage URL (SQLite, PostgreSQL, MySQL: an RDB storage with
heartbeats) or a journal file path (for shared file systems; no heartbeat). An RDB storage
gets Optuna's heartbeat and the retry of a stale trial (`recovery.RetryWithSameParams`), and
waits out a database outage (`retrying_storage`); a damaged or foreign file is refused with one
line naming it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from omegaconf import DictConfig
from optuna.storages.journal import JournalFileBackend, JournalStorage

from study.core.errors import ConfigError
from study.core.masking import mask_secrets
from study.core.retry import DEFAULT_WINDOW_SECONDS, set_window_seconds
from study.core.sqlite_files import creation_lock
from study.execution.recovery import RetryWithSameParams, grace_period
from study.execution.retrying_storage import RetryingRDBStorage
from study.tracking.retrying import cover_http_outages
from study.tracking.store import connect_once

# Heartbeats, retries and TPE's `group` are marked experimental by Optuna; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

log = logging.getLogger(__name__)

SQLITE_LOCK_TIMEOUT_SECONDS = 60  # several workers write to one SQLite file
POSTGRES_CONNECT_TIMEOUT_SECONDS = 15
IDLE_IN_TRANSACTION_FLOOR_SECONDS = 5.0
SCHEMA_RACE_DELAYS = (0.5, 1.0, 2.0)  # seconds between looks at a schema being created
# A driver that creates a study's SQLite file writes its header within milliseconds: an empty
# file that stays empty this long is not being made by another driver starting the study.
EMPTY_FILE_WAIT_SECONDS = 2.0


def make_storage(study_cfg: DictConfig, tracking_uri: str) -> optuna.storages.BaseStorage:
    set_store_retry_window(study_cfg)
    url = study_cfg.storage
    retry = RetryWithSameParams(tracking_uri, study_cfg.max_retry)
    if "://" not in url:
        check_existing_file(Path(url), "an Optuna journal file")
        check_journal_header(Path(url))
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(url))
        except Exception as error:
            raise ConfigError(describe_storage_error(error, url)) from None
    # A pooled connection that a database restart closed is replaced before it is used.
    engine_kwargs = {"pool_pre_ping": True}
    first_open = contextlib.nullcontext()
    if url.startswith("sqlite:"):
        database = url.removeprefix("sqlite:///")
        if database and database != ":memory:":
            # Not opened here but by SQLite alone: a process that holds the study open (a second
            # session of the Python API) would lose SQLite's locks when any other handle on the
            # file closes, and with them writes of the write-ahead log.
            check_existing_file(Path(database), "an Optuna SQLite database")
            check_sqlite_intact(Path(database))
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            # Drivers that start together on a new file would each create Optuna's tables and
            # switch its journal (SQLite refuses the losers at once: "database is locked").
            first_open = first_open_of_sqlite(Path(database))
        engine_kwargs["connect_args"] = {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = postgres_connect_args(study_cfg, url)
    try:
        connect_once(url, "study.storage", expected="Optuna")  # not MLflow's database
        with first_open:
            return rdb_storage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=study_cfg.heartbeat_interval,
                grace_period=grace_period(study_cfg),
                heartbeat_stale_trial_callback=retry,
            )
    except ConfigError:
        raise
    except Exception as error:  # unreachable server, truncated file, wrong password, ...
        raise ConfigError(describe_storage_error(error, url)) from None


def postgres_connect_args(study_cfg: DictConfig, url: str = "") -> dict:
    """A host that drops packets answers in seconds, not after the system's TCP time-out. And a
    worker frozen (SIGSTOP, swapping) inside a transaction would hold its row locks until it
    wakes: Optuna's tell locks the trial's row, so the failure of the frozen trial by another
    process waited with it, for ever. The server ends such a session after the heartbeat's grace
    period (at least IDLE_IN_TRANSACTION_FLOOR_SECONDS: a busy machine may pause a live process
    for a second), and the lock goes with it. Options of the URL's own (`?options=...`) are kept."""
    idle_ms = int(max(grace_period(study_cfg), IDLE_IN_TRANSACTION_FLOOR_SECONDS) * 1000)
    own = sqlalchemy.engine.make_url(url).query.get("options", "") if url else ""
    own = own if isinstance(own, str) else " ".join(own)
    return {
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
        "options": f"{own} -c idle_in_transaction_session_timeout={idle_ms}".strip(),
    }


def set_store_retry_window(study_cfg: DictConfig) -> None:
    """Every store call of this process waits out an outage for study.store_retry_seconds: the
    driver and each worker open the study storage here before they use any store."""
    window = study_cfg.get("store_retry_seconds", DEFAULT_WINDOW_SECONDS)  # plain test configs lack it
    set_window_seconds(window)
    cover_http_outages(window)


def rdb_storage(url: str, **kwargs) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, retrying while the database is unreachable. Drivers on several
    machines starting on a new database all create Optuna's tables; PostgreSQL lets one CREATE
    TABLE win and fails the others: look again."""
    for delay in SCHEMA_RACE_DELAYS:
        try:
            return RetryingRDBStorage(url, **kwargs)
        except sqlalchemy.exc.IntegrityError:
            time.sleep(delay)
    return RetryingRDBStorage(url, **kwargs)


def check_existing_file(path: Path, kind: str) -> None:
    """An existing study file must be what it claims: never silently replaced by a new study."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"study.storage: {path} is a folder; expected {kind}")
    size = path.stat().st_size
    waited = 0.0
    while size == 0 and waited < EMPTY_FILE_WAIT_SECONDS:  # another driver may be creating it
        time.sleep(0.1)
        waited += 0.1
        size = path.stat().st_size
    if size == 0:
        raise ConfigError(
            f"study.storage: {path} is empty (0 bytes), not {kind}; it may be damaged: "
            "restore it, or move it away to start a new study"
        )


def check_journal_header(path: Path) -> None:
    """Optuna's journal is one JSON object per line. (A SQLite file's header is SQLite's to read,
    see check_sqlite_intact.)"""
    if not path.is_file():
        return
    with path.open("rb") as file:
        if not file.read(1).startswith(b"{"):
            raise ConfigError(
                f"study.storage: {path} is not an Optuna journal file (damaged or another kind of file)"
            )


@contextlib.contextmanager
def first_open_of_sqlite(path: Path) -> Iterator[None]:
    """One process of this machine at a time opens the file for the first time."""
    with creation_lock(path):
        use_write_ahead_log(path)
        yield


def use_write_ahead_log(path: Path) -> None:
    """SQLite's write-ahead log (kept by the file from then on): readers never block writers,
    so a worker frozen (SIGSTOP) between two reads of the study cannot lock the driver and the
    other workers out, and the driver can fail the frozen worker's trial. Only a process frozen
    inside one of its short writes still holds the others up.

    Switching needs the file to itself; a file already switched is only read, so a worker that
    joins a running study does not wait for a quiet moment."""
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_LOCK_TIMEOUT_SECONDS)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def check_sqlite_intact(path: Path) -> None:
    """SQLite's own quick check of every page (milliseconds for a study's file): bytes damaged
    in the middle of the file are one line naming it, not a traceback from deep in a query."""
    if not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_TIMEOUT_SECONDS * 1000}")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as error:
        problems = [str(error)]
    if problems == ["file is not a database"]:
        raise ConfigError(
            f"study.storage: {path} is not an Optuna SQLite database (damaged or another kind of file)"
        )
    if problems != ["ok"]:
        raise ConfigError(
            f"study.storage: {path} is a damaged Optuna SQLite database ({problems[0]}); "
            "restore it from a backup, or move it away to start a new study"
        )


def describe_storage_error(error: Exception, url: str) -> str:
    """One line for a storage that cannot be opened (unreachable, refused, truncated, garbage)."""
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return mask_secrets(f"study.storage: {url}: cannot be opened as an Optuna study store ({first.strip()})")
