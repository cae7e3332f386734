"""A password planted in the storage and tracking URLs appears nowhere: not in any file a
command writes (Hydra's output folder, the run's artifacts, the study folder), not in any
MLflow or Optuna table, not on the console, also when the command fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient

from tests.helpers import TrackingServer, free_port, run_command

PASSWORD = "Pl4ntedPW"


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


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

    for done in (finished, failed, refused):
        assert PASSWORD not in done.stdout + done.stderr
    hydra_files = list((tmp_path / "runs" / "hydra").glob("*/*/.hydra/overrides.yaml"))
    assert len(hydra_files) == 3, "Hydra's output folder of each command, failed ones included"
    assert all("study:***@127.0.0.1" in file.read_text() for file in hydra_files)
    assert files_holding(tmp_path, PASSWORD) == []
    assert sqlite_rows_holding(tmp_path / "runs" / "mlflow.db", PASSWORD) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study").experiment_id
    (run,) = [r for r in client.search_runs([experiment]) if r.info.status == "FINISHED"]
    assert run.info.run_name == "http://alice:***@mlflow-host/x"
    assert run.data.tags["mlflow.runName"] == "http://alice:***@mlflow-host/x"


def postgres_rows_holding(url: str, secret: str) -> list[str]:
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "select table_name from information_schema.tables where table_schema = 'public'"
        ).fetchall()
        found = []
        for (table,) in tables:
            rows = connection.execute(f'select t::text from "{table}" t').fetchall()
            found += [f"{table}: {row[0]}" for row in rows if secret in row[0]]
        return found


@pytest.mark.slow
def test_no_password_with_real_servers(tmp_path, postgres):
    """A train and a sweep against PostgreSQL and an `mlflow server`, both URLs with a password."""
    server_root = tmp_path / "server"
    server_root.mkdir()
    artifacts = server_root / "artifacts"
    artifacts.mkdir()
    server = TrackingServer(f"sqlite:///{server_root / 'mlflow.db'}", artifacts)
    server.start()
    try:
        port = server.url.rsplit(":", 1)[1]
        tracking = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
        host = postgres.rsplit("@", 1)[1]
        storage = f"postgresql://study:{PASSWORD}@{host}/optuna"
        work = tmp_path / "work"
        work.mkdir()
        common = ["data=digits", "trainer.epochs=1", f"mlflow.tracking_uri={tracking}"]
        train = run_command("train", *common, "model=softmax", cwd=work)
        assert train.returncode == 0, train.stderr[-3000:]
        sweep = run_command(
            "sweep",
            *common,
            "search_space=learning_rate",
            "study.name=secret",
            "study.n_trials=2",
            "pruner=none",
            f"study.storage={storage}",
            cwd=work,
        )
        assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
        client = MlflowClient(tracking_uri=server.url)
        runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
        assert len(runs) == 4  # the train run, the study's parent run and its two trials
    finally:
        server.stop()
    for done in (train, sweep):
        assert PASSWORD not in done.stdout + done.stderr
    # The worker spec files (logs/worker_N.json, mode 0600) are read once and removed.
    assert not list(tmp_path.rglob("worker_*.json"))
    assert files_holding(tmp_path, PASSWORD) == []
    assert sqlite_rows_holding(server_root / "mlflow.db", PASSWORD) == []
    assert postgres_rows_holding(f"postgresql://study@{host}/optuna", PASSWORD) == []
