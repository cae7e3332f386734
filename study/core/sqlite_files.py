"""SQLite files that several processes open at once: the MLflow store and the Optuna study.

MLflow and Optuna create their tables (MLflow then migrates them with Alembic) when a process
first opens a new file. Processes that start together each do it, and the losers fail on tables
the winner made ("table studies already exists", "_alembic_tmp_metrics already exists"), which
can leave MLflow's schema half-migrated for good. A file lock beside the database lets one
process at a time open it for the first time; the others then find the tables made.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from filelock import FileLock

# Long enough for MLflow's full chain of migrations on a slow disk; a lock held longer than this
# belongs to a process that hangs, and waiting on cannot help.
CREATION_LOCK_TIMEOUT_SECONDS = 300


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (query string dropped); None for any other URL
    and for an in-memory database."""
    if urllib.parse.urlsplit(url).scheme != "sqlite":
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def creation_lock(database: Path) -> FileLock:
    """`<database>.lock`: held while a process creates or migrates `database`'s tables.

    The lock file stays beside the database (FileLock leaves it: removing it would let a late
    process lock a new file while another still holds the old one)."""
    return FileLock(f"{database}.lock", timeout=CREATION_LOCK_TIMEOUT_SECONDS)
