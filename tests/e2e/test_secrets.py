"""A password planted in the storage and tracking URLs appears nowhere: not in any file a
command writes (Hydra's output folder, the run's artifacts, the study folder), not in any
MLflow or Optuna table, not on the console, also when the command fails."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote, unquote

import psycopg
import pytest
from mlflow import MlflowClient

from tests.helpers import TrackingServer, free_port, run_command

# As generated passwords are: "/", "+" and a "%2F" (in a URL, an encoded "/"). Written raw
# where the URL parser allows it (SQLAlchemy's), URL-encoded where it does not (an http URL).
PASSWORD = "Pl4nted/pw+Qx7Kz%2Fend"
ENCODED = quote(PASSWORD, safe="")
PG_PASSWORD = unquote(PASSWORD)  # what SQLAlchemy hands PostgreSQL (postgres_with_password)
# A password masked only in part leaks one of its ends: look for those (and for the encoded form).
LEAKS = ("Pl4nted", "Qx7Kz", ENCODED)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def leaks_in(folder: Path) -> list[Path]:
    return [path for leak in LEAKS for path in files_holding(folder, leak)]


def leaks_in_text(*outputs: str) -> list[str]:
    return [leak for leak in LEAKS for text in outputs if leak in text]


def readable_by_others(folder: Path, *parts: str) -> list[Path]:
    """Files under `folder` that hold any of `parts` (of a URL) and that other users can read."""
    found = [path for part in parts for path in files_holding(folder, part)]
    return [path for path in found if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH)]


def sqlite_rows_holding(database: Path, secret: str) -> list[str]:
    with sqlite3.connect(database) as connection:
        return [line for line in connection.iterdump() if secret in line]


def test_no_password_in_files_tables_or_console(tmp_path):
    """Runs that succeed, fail and are refused, with the password in their overrides."""
    storage = f"postgresql://study:{PASSWORD}@127.0.0.1:{free_port()}/optuna"  # nothing listens
    run_name = f"http://alice:{PASSWORD}@mlflow-host/x"
    common = ["data=digits", "trainer.epochs=1", f"+mlflow.tags.storage='{storage}'"]
    finished = run_command("train", *common, "model=softmax", f"mlflow.run_name='{run_name}'", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # A failed run: the traceback and Hydra's "Error executing job with overrides" line.
    failed = run_command(
        "train", *common, "model=mlp", "optimizer=sgd", "optimizer.learning_rate=1e30", cwd=tmp_path
    )
    assert failed.returncode == 1 and "Error executing job with overrides" in failed.stderr
    assert "storage='postgresql://study:***@127.0.0.1" in failed.stderr
    # Refused: the storage cannot be reached; the error names it, masked.
    refused = run_command(
        "sweep", "data=digits", "search_space=learning_rate", f"study.storage={storage}", cwd=tmp_path
    )
    assert refused.returncode == 2 and "study.storage: postgresql://study:***@127.0.0.1" in refused.stderr
    multirun = multirun_refused(tmp_path, common)

    for done in (finished, failed, refused, multirun):
        assert leaks_in_text(done.stdout, done.stderr) == []
    hydra_files = list((tmp_path / "runs" / "hydra").glob("*/*/.hydra/overrides.yaml"))
    assert len(hydra_files) == 3, "Hydra's output folder of each command, failed ones included"
    assert all("study:***@127.0.0.1" in file.read_text() for file in hydra_files)
    assert leaks_in(tmp_path) == []
    assert readable_by_others(tmp_path, "alice", "study:***", "postgresql") == []
    for leak in LEAKS:
        assert sqlite_rows_holding(tmp_path / "runs" / "mlflow.db", leak) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study").experiment_id
    (run,) = [r for r in client.search_runs([experiment]) if r.info.status == "FINISHED"]
    assert run.info.run_name == "http://alice:***@mlflow-host/x"
    assert run.data.tags["mlflow.runName"] == "http://alice:***@mlflow-host/x"


def multirun_refused(tmp_path: Path, common: list[str]):
    """`-m`: Hydra prints the overrides escaped (`http\\://alice\\:...@`) and saves them in
    multirun.yaml; the job is refused (nothing listens at the tracking URI)."""
    tracking = f"http://alice:{ENCODED}@127.0.0.1:{free_port()}"
    done = run_command(
        "train", "-m", *common, "model=softmax", f"mlflow.tracking_uri={tracking}", cwd=tmp_path
    )
    assert (
        done.returncode == 2 and "mlflow.tracking_uri: cannot use http://alice:***@127.0.0.1" in done.stderr
    )
    assert "mlflow.tracking_uri=http\\://alice\\:***@127.0.0.1" in done.stdout + done.stderr
    (saved,) = tmp_path.rglob("multirun.yaml")
    assert "http://alice:***@127.0.0.1" in saved.read_text() and "study:***@127.0.0.1" in saved.read_text()
    return done


def postgres_rows_holding(url: str, secret: str) -> list[str]:
    with psycopg.connect(url, password=PG_PASSWORD) as connection:
        tables = connection.execute(
            "select table_name from information_schema.tables where table_schema = 'public'"
        ).fetchall()
        found = []
        for (table,) in tables:
            rows = connection.execute(f'select t::text from "{table}" t').fetchall()
            found += [f"{table}: {row[0]}" for row in rows if secret in row[0]]
        return found


def start_tracking_server(tmp_path: Path) -> tuple[TrackingServer, Path]:
    """A real `mlflow server` on a SQLite store in tmp_path/server; (server, its folder)."""
    server_root = tmp_path / "server"
    (server_root / "artifacts").mkdir(parents=True)
    server = TrackingServer(f"sqlite:///{server_root / 'mlflow.db'}", server_root / "artifacts")
    server.start()
    return server, server_root


def sweep_overrides(tracking: str, storage: str, name: str, n_trials: int) -> list[str]:
    return [
        "data=digits",
        "trainer.epochs=1",
        f"mlflow.tracking_uri={tracking}",
        "search_space=learning_rate",
        f"study.name={name}",
        f"study.n_trials={n_trials}",
        "pruner=none",
        f"study.storage={storage}",
    ]


@pytest.mark.slow
def test_no_password_with_real_servers(tmp_path, postgres_with_password):
    """A train and a sweep against PostgreSQL (which checks the password) and an `mlflow server`,
    both URLs with the password: both stores open, and the password is found nowhere."""
    server, server_root = start_tracking_server(tmp_path)
    host = f"127.0.0.1:{postgres_with_password.port}"
    try:
        tracking = f"http://alice:{ENCODED}@127.0.0.1:{server.port}"  # an http URL needs "/" encoded
        storage = f"postgresql://study:{PASSWORD}@{host}/optuna"
        work = tmp_path / "work"
        work.mkdir()
        train = run_command(
            "train",
            "data=digits",
            "trainer.epochs=1",
            f"mlflow.tracking_uri={tracking}",
            "model=softmax",
            cwd=work,
        )
        assert train.returncode == 0, train.stderr[-3000:]
        sweep = run_command("sweep", *sweep_overrides(tracking, storage, "secret", 2), cwd=work)
        assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
        client = MlflowClient(tracking_uri=server.url)
        runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
        assert len(runs) == 4  # the train run, the study's parent run and its two trials
    finally:
        server.stop()
    for done in (train, sweep):
        assert leaks_in_text(done.stdout, done.stderr) == []
    # The worker spec files (logs/worker_N.json, mode 0600) are read once and removed.
    assert not list(tmp_path.rglob("worker_*.json"))
    assert leaks_in(tmp_path) == []
    assert readable_by_others(work, "alice", "study:***", host) == []
    for leak in LEAKS:
        assert sqlite_rows_holding(server_root / "mlflow.db", leak) == []
        assert postgres_rows_holding(f"postgresql://study@{host}/optuna", leak) == []


@pytest.mark.slow
def test_credentials_outside_the_command_line(tmp_path, postgres_with_password, monkeypatch):
    """URLs without a password (nothing for `ps` to show): PostgreSQL's password from PGPASSWORD
    or ~/.pgpass, MLflow's from MLFLOW_TRACKING_USERNAME/PASSWORD. Without them PostgreSQL,
    which checks passwords, refuses; with them the study runs and its report loads it."""
    for name in ("PGPASSWORD", "PGPASSFILE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    port = postgres_with_password.port
    storage = f"postgresql://study@127.0.0.1:{port}/optuna"
    no_password = {"HOME": str(tmp_path / "nobody")}  # no ~/.pgpass either
    with_pgpass = {"HOME": str(pgpass_home(tmp_path / "home", f"127.0.0.1:{port}:*:study:{PG_PASSWORD}"))}
    mlflow_login = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PG_PASSWORD}
    work = tmp_path / "work"
    work.mkdir()
    server, server_root = start_tracking_server(tmp_path)
    try:
        overrides = sweep_overrides(server.url, storage, "by-env", 1)
        refused = run_command("sweep", *overrides, cwd=work, env=no_password)
        assert refused.returncode == 2 and "password" in refused.stderr, refused.stderr[-2000:]
        env = {**no_password, **mlflow_login, "PGPASSWORD": PG_PASSWORD}
        sweep = run_command("sweep", *overrides, cwd=work, env=env)
        assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
        # The storage URL the study logged is whole: `study.report` needs no --storage.
        report = ["--study", "by-env", "--tracking-uri", server.url]
        loaded = run_command("report", *report, cwd=work, env={**with_pgpass, **mlflow_login})
        not_loaded = run_command("report", *report, cwd=work, env=no_password)
    finally:
        server.stop()
    assert loaded.returncode == 0 and "not loaded" not in loaded.stderr, loaded.stderr[-2000:]
    assert "Optuna study by-env not loaded from postgresql://study@127.0.0.1" in not_loaded.stderr
    for done in (refused, sweep, loaded, not_loaded):
        assert leaks_in_text(done.stdout, done.stderr) == []
    assert leaks_in(work) == [] and leaks_in(server_root) == []  # environment variables are not logged


def pgpass_home(home: Path, line: str) -> Path:
    """A home folder with a ~/.pgpass of one line; libpq ignores the file unless it is 0600."""
    home.mkdir()
    (home / ".pgpass").write_text(line + "\n")
    (home / ".pgpass").chmod(0o600)
    return home
