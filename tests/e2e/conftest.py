"""Fixtures of the end-to-end tests: a throwaway PostgreSQL cluster on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import free_port

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)


PASSWORD = "s3cret-pw"


def as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster; yields a URL prefix with (ignored) credentials."""
    if PG_BIN is None:
        pytest.skip("needs PostgreSQL server binaries (Debian package postgresql; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="study-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    run = lambda command: subprocess.run(as_postgres(command), check=True, capture_output=True)  # noqa: E731
    run([f"{PG_BIN}/initdb", "-D", str(root / "data"), "-U", "study", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    run([f"{PG_BIN}/pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o", options, "start"])
    try:
        for database in ("optuna", "mlflow"):
            run([f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "study", database])
        yield f"postgresql://study:{PASSWORD}@127.0.0.1:{port}"
    finally:
        run([f"{PG_BIN}/pg_ctl", "-D", str(root / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
