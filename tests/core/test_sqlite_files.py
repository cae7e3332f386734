"""The file lock beside a SQLite file that several processes may create at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.core.sqlite_files import creation_lock, sqlite_file


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///runs/mlflow.db", Path("runs/mlflow.db")),
        ("sqlite:////abs/optuna.db?timeout=30", Path("/abs/optuna.db")),
        ("sqlite:///:memory:", None),
        ("postgresql://db/optuna", None),
        ("http://127.0.0.1:5000", None),
        ("runs/journal.log", None),
    ],
)
def test_the_database_file_of_a_url(url, expected):
    assert sqlite_file(url) == expected


def test_another_process_waits_while_one_holds_the_lock(tmp_path):
    database = tmp_path / "mlflow.db"
    probe = (
        "import sys, filelock\n"
        "try:\n"
        f"    filelock.FileLock({f'{database}.lock'!r}, timeout=0).acquire()\n"
        "except filelock.Timeout:\n"
        "    sys.exit(3)\n"
    )
    with creation_lock(database):
        held = subprocess.run([sys.executable, "-c", probe], check=False)
    free = subprocess.run([sys.executable, "-c", probe], check=False)
    assert (held.returncode, free.returncode) == (3, 0)
