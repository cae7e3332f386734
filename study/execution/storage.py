"""Optuna storage for a study, opened once per process, never silently replaced.

`study.storage` is an Optuna storage URL (SQLite, PostgreSQL, MySQL: an RDB storage with
heartbeats) or a journal file path (for shared file systems; no heartbeat). An RDB storage
gets Optuna's heartbeat and the retry of a stale trial (`recovery.RetryWithSameParams`); a
damaged or foreign file is refused with one line naming it.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from omegaconf import DictConfig
from optuna.storages.journal import JournalFileBackend, JournalStorage

from study.core.errors import ConfigError
from study.core.masking import mask_secrets
from study.execution.recovery import RetryWithSameParams, grace_period

# Heartbeats, retries and TPE's `group` are marked experimental by Optuna; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

log = logging.getLogger(__name__)

SQLITE_LOCK_TIMEOUT_SECONDS = 60  # several workers write to one SQLite file
POSTGRES_CONNECT_TIMEOUT_SECONDS = 15
SCHEMA_RACE_DELAYS = (0.5, 1.0, 2.0)  # seconds between looks at a schema being created
SQLITE_HEADER = b"SQLite format 3\x00"
# An empty file this young is being made by another driver that starts the same study.
FRESH_FILE_SECONDS = 10


def make_storage(study_cfg: DictConfig, tracking_uri: str) -> optuna.storages.BaseStorage:
    url = study_cfg.storage
    retry = RetryWithSameParams(tracking_uri, study_cfg.max_retry)
    if "://" not in url:
        check_existing_file(Path(url), "an Optuna journal file", _journal_header_ok)
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(url))
        except Exception as error:
            raise ConfigError(describe_storage_error(error, url)) from None
    engine_kwargs = {}
    if url.startswith("sqlite:"):
        database = url.removeprefix("sqlite:///")
        if database and database != ":memory:":
            check_existing_file(Path(database), "an Optuna SQLite database", _sqlite_header_ok)
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
    elif url.startswith("postgresql"):
        # A host that drops packets answers in seconds, not after the system's TCP time-out.
        engine_kwargs = {"connect_args": {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}}
    try:
        return rdb_storage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=study_cfg.heartbeat_interval,
            grace_period=grace_period(study_cfg),
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as error:  # unreachable server, truncated file, wrong password, ...
        raise ConfigError(describe_storage_error(error, url)) from None


def rdb_storage(url: str, **kwargs) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage. Drivers on several machines starting on a new database all create
    Optuna's tables; PostgreSQL lets one CREATE TABLE win and fails the others: look again."""
    for delay in SCHEMA_RACE_DELAYS:
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.IntegrityError:
            time.sleep(delay)
    return optuna.storages.RDBStorage(url, **kwargs)


def check_existing_file(path: Path, kind: str, header_ok) -> None:
    """An existing study file must be what it claims: never silently replaced by a new study."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"study.storage: {path} is a folder; expected {kind}")
    size = path.stat().st_size
    if size == 0 and time.time() - path.stat().st_mtime > FRESH_FILE_SECONDS:
        raise ConfigError(
            f"study.storage: {path} is empty (0 bytes), not {kind}; it may be damaged: "
            "restore it, or move it away to start a new study"
        )
    with path.open("rb") as file:
        head = file.read(len(SQLITE_HEADER))
    if size and not header_ok(head):
        raise ConfigError(f"study.storage: {path} is not {kind} (damaged or another kind of file)")


def _sqlite_header_ok(head: bytes) -> bool:
    return head == SQLITE_HEADER


def _journal_header_ok(head: bytes) -> bool:
    return head.startswith(b"{")  # Optuna's journal: one JSON object per line


def describe_storage_error(error: Exception, url: str) -> str:
    """One line for a storage that cannot be opened (unreachable, refused, truncated, garbage)."""
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return mask_secrets(f"study.storage: {url}: cannot be opened as an Optuna study store ({first.strip()})")
