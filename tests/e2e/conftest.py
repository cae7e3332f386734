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


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that a test can stop and start again (same
    port, same data): a database restart as an operator does it."""

    def __init__(self, root: Path, password: str | None = None):
        self.root = root
        self.port = free_port()
        self.password = password  # None: any password, or none, is let in (trust)
        self.url = f"postgresql://study:{PASSWORD}@127.0.0.1:{self.port}"  # with (ignored) credentials

    def create(self) -> None:
        self._run(
            [f"{PG_BIN}/initdb", "-D", str(self.root / "data"), "-U", "study", *self._auth(), "-E", "UTF8"]
        )
        self.start()
        for database in ("optuna", "mlflow"):  # through the socket, trusted also with a password
            self._run(
                [f"{PG_BIN}/createdb", "-h", str(self.root), "-p", str(self.port), "-U", "study", database]
            )

    def _auth(self) -> list[str]:
        if self.password is None:
            return ["--auth=trust"]
        # TCP clients (the commands under test) must give the password, as on a real server.
        password_file = self.root / "password"
        password_file.write_text(self.password)
        return ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._pg_ctl("-l", str(self.root / "log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions are ended (their clients see the connection dropped), then it stops."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        self._run([f"{PG_BIN}/pg_ctl", "-D", str(self.root / "data"), *args])

    @staticmethod
    def _run(command: list[str]) -> None:
        subprocess.run(as_postgres(command), check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres_cluster():
    """A throwaway PostgreSQL cluster with the databases `optuna` and `mlflow`."""
    yield from throwaway_cluster(password=None)


@pytest.fixture(scope="module")
def postgres_with_password(request):
    """A throwaway cluster whose user `study` must give the module's PG_PASSWORD over TCP."""
    yield from throwaway_cluster(password=request.module.PG_PASSWORD)


def throwaway_cluster(password: str | None):
    if PG_BIN is None:
        pytest.skip("needs PostgreSQL server binaries (Debian package postgresql; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="study-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(root, password)
    try:
        cluster.create()
        yield cluster
    finally:
        # Not checked: a test may have left it stopped.
        subprocess.run(
            as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(root / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(postgres_cluster):
    """A throwaway PostgreSQL cluster; yields a URL prefix with (ignored) credentials."""
    return postgres_cluster.url


@pytest.fixture
def servers_on_postgres(postgres, tmp_path):
    """(Optuna storage URL, a real `mlflow server`), both on the throwaway PostgreSQL."""
    from tests.helpers import TrackingServer

    server = TrackingServer(f"{postgres}/mlflow", tmp_path / "artifacts")
    server.start()
    yield f"{postgres}/optuna", server
    server.stop()
