"""Bad input is refused before anything is written, with one line naming the key or file.

The commands run as users run them, in a subprocess from a fresh folder; after a refusal the
folder holds no MLflow store, no Optuna storage and no study folder (Hydra's own output
folder for the job aside).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient

from study import report, reproduce
from study.config.checks import checked_sweep_config
from study.config.probes import gpus_problem, visible_gpus
from study.core.errors import ConfigError
from tests.helpers import TINY_VALIDATION, compose_config, free_port, run_command, synthetic_digits

PASSWORD = "S3cretPW"


def assert_refused(done: subprocess.CompletedProcess, expected: str, cwd: Path) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(expected), lines[0]
    assert PASSWORD not in done.stdout + done.stderr
    for store in ("runs/mlflow.db", "runs/optuna.db", "runs/studies", "runs/mlartifacts"):
        assert not (cwd / store).exists(), f"{store} written by a refused command"


def npz_with(tmp_path: Path, **arrays) -> Path:
    x_train, y_train = synthetic_digits(400, seed=1)
    x_test, y_test = synthetic_digits(100, seed=2)
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **arrays}
    file = tmp_path / "data.npz"
    np.savez(file, **data)
    return file


TRAIN_REFUSALS = [
    (["trainer.seed=-1"], "study.train: error: trainer.seed: expected an integer in [0, 2**32 - 1], got -1"),
    (["optimizer.beta_1=1.5"], "study.train: error: optimizer.beta_1: expected a number in [0, 1), got 1.5"),
    (["optimizer.beta_2=1.0"], "study.train: error: optimizer.beta_2: expected a number in [0, 1), got 1.0"),
    (["optimizer.epsilon=0"], "study.train: error: optimizer.epsilon: expected a finite number > 0, got 0.0"),
    (
        ["optimizer=rmsprop", "optimizer.rho=1.2"],
        "study.train: error: optimizer.rho: expected a number in [0, 1)",
    ),
    (
        ["optimizer=sgd", "optimizer.momentum=2"],
        "study.train: error: optimizer.momentum: expected a number in [0, 1]",
    ),
    (
        ["mlflow.tracking_uri=foo://x"],
        "study.train: error: mlflow.tracking_uri: expected a tracking URI MLflow knows",
    ),
    (
        [f"mlflow.tracking_uri=http://alice:{PASSWORD}@127.0.0.1:abc"],
        "study.train: error: mlflow.tracking_uri: expected an http URL with a numeric port",
    ),
]


# Values that once reached training (or a traceback) before anything said they were wrong.
TRAIN_REFUSALS += [
    (
        ["mlflow.tracking_uri=file:///tmp/mlruns"],
        "study.train: error: mlflow.tracking_uri: expected a database URL",
    ),
    (["mlflow.tracking_uri=mlruns"], "study.train: error: mlflow.tracking_uri: expected a database URL"),
    (["mlflow.tracking_uri=databricks"], "study.train: error: mlflow.tracking_uri: cannot use databricks: "),
    (  # one connection attempt, not MLflow's retries of about 100 s
        [f"mlflow.tracking_uri=postgresql://alice:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"],
        "study.train: error: mlflow.tracking_uri: cannot use postgresql://alice:***@127.0.0.1:",
    ),
    (
        ["optimizer.learning_rate=inf"],
        "study.train: error: optimizer.learning_rate: expected a finite number > 0",
    ),
    (
        ["model=mlp", "model.hidden1_units=1000000000"],
        "study.train: error: model.hidden1_units: expected an integer in [1, 65536], got 1000000000",
    ),
    (["mlflow.experiment_name=''"], "study.train: error: mlflow.experiment_name: expected a non-empty name"),
]


@pytest.mark.parametrize(("overrides", "expected"), TRAIN_REFUSALS)
def test_bad_values_are_one_line_before_tensorflow_starts(tmp_path, overrides, expected):
    done = run_command("train", "data=digits", *overrides, cwd=tmp_path)
    assert_refused(done, expected, tmp_path)


def test_a_tracking_folder_that_is_a_file(tmp_path):
    (tmp_path / "store").write_text("not a folder")
    done = run_command("train", "data=digits", "mlflow.tracking_uri=sqlite:///store/mlflow.db", cwd=tmp_path)
    expected = "mlflow.tracking_uri: expected a SQLite database file in a folder, but store is a file"
    assert_refused(done, f"study.train: error: {expected}", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "runs").write_text("not a folder")  # Hydra's output folder goes below runs/ too
    done = run_command("train", "data=digits", cwd=elsewhere)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("study.train: error: [Errno 20] Not a directory: 'runs/hydra/train/")


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (
            {"y_train": np.full(400, 200, np.uint8)},
            "y_train: expected class labels 0..K-1 with training examples of each, got labels up to 200",
        ),
        (
            {"x_test": np.zeros((100, 10, 10), np.uint8)},
            "x_test: expected test images of the training images' shape",
        ),
        (
            {"x_train": np.full((400, 8, 8), "7")},
            "x_train: expected integer pixel values 0..255 (uint8), got <U1 values",
        ),
    ],
)
def test_bad_data_is_one_line_before_any_run(tmp_path, arrays, expected):
    file = npz_with(tmp_path, **arrays)
    done = run_command("train", f"data.path={file}", f"data.validation_size={TINY_VALIDATION}", cwd=tmp_path)
    assert_refused(done, f"study.train: error: data.path: {file}: {expected}", tmp_path)


def test_a_replayed_config_with_a_yaml_syntax_error(tmp_path):
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "config.yaml").write_text("data:\n  name: digits\nmodel: {name: mlp\n")
    done = run_command("train", "--config-path", "replay", "--config-name", "config", cwd=tmp_path)
    assert_refused(
        done, f"study.train: error: {tmp_path / 'replay' / 'config.yaml'}: not valid YAML at line 4", tmp_path
    )


@pytest.mark.slow  # a store made and read by two processes: about 15 s
def test_a_deleted_experiment_is_named(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=store)
    client.delete_experiment(client.create_experiment("study"))
    done = run_command("train", "data=digits", f"mlflow.tracking_uri={store}", cwd=tmp_path)
    assert_refused(
        done, "study.train: error: mlflow.experiment_name: experiment 'study' is deleted", tmp_path
    )
    assert client.search_runs([client.get_experiment_by_name("study").experiment_id]) == []


@pytest.mark.slow  # MLflow's client gives up after one retry: about 10 s
def test_an_unreachable_tracking_server_is_one_line_without_its_password(tmp_path):
    url = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    done = run_command("train", "data=digits", f"mlflow.tracking_uri={url}", cwd=tmp_path)
    assert_refused(
        done, "study.train: error: mlflow.tracking_uri: cannot use http://alice:***@127.0.0.1:", tmp_path
    )


SWEEP_BASE = ["data=digits", "search_space=learning_rate", "study.n_trials=2"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [f"study.storage=postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/optuna"],
            "study.sweep: error: study.storage: postgresql://u:***@127.0.0.1:",
        ),
        (
            ["study.storage=sqlite:/runs/optuna.db"],
            "study.sweep: error: study.storage: expected an Optuna storage URL",
        ),
        (["study.gpus=[99]"], "study.sweep: error: study.gpus: expected "),
        (["study.name=" + "x" * 300], "study.sweep: error: study.name: expected letters, digits"),
        (["study.registered_model='a/b c'"], "study.sweep: error: study.registered_model: expected null or"),
        (["study.timeout=inf"], "study.sweep: error: study.timeout: expected null or a finite number > 0"),
    ],
)
def test_sweep_refusals_leave_no_study_behind(tmp_path, overrides, expected):
    done = run_command("sweep", *SWEEP_BASE, *overrides, cwd=tmp_path)
    assert_refused(done, expected, tmp_path)
    assert not (tmp_path / "sqlite:").exists()  # sqlite:/x is no journal file path


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("postgresql://u:pw@db-host:abc/optuna", "with a numeric port"),
        ("foo://x/y", "SQLAlchemy has no database dialect 'foo'"),
        ("sqlite:///:memory:", "not an in-memory database"),
        ("sqlite://", "not an in-memory database"),
        ("mysql+nosuchdriver://u@h/db", "SQLAlchemy has no database dialect 'mysql+nosuchdriver'"),
    ],
)
def test_storage_urls_parse_as_urls(storage, expected):
    cfg = compose_config("sweep", [f"study.storage={storage}"])
    with pytest.raises(ConfigError, match=r"^study\.storage: expected") as caught:
        checked_sweep_config(cfg)
    assert expected in str(caught.value)
    assert ":pw@" not in str(caught.value)


def test_storage_paths_stay_journal_files(tmp_path):
    (tmp_path / "afile").write_text("x")
    for storage, valid in (
        (tmp_path / "journal.log", True),
        (tmp_path / "new" / "journal.log", True),
        (tmp_path / "afile" / "journal.log", False),
        (tmp_path, False),
    ):
        cfg = compose_config("sweep", [f"study.storage={storage}"])
        if valid:
            checked_sweep_config(cfg)
        else:
            with pytest.raises(ConfigError, match=r"^study\.storage: expected a journal file path"):
                checked_sweep_config(cfg)


FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)"
"""


def test_gpus_are_found_without_a_backend(tmp_path, monkeypatch):
    """`nvidia-smi -L` (a stand-in script here: this machine may have no GPU) and
    CUDA_VISIBLE_DEVICES decide which study.gpus entries exist."""
    (tmp_path / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ([0, 1], "nvidia-smi -L")
    assert gpus_problem([0, 1]) is None
    assert gpus_problem([7]) == "indices of this machine's GPUs (0, 1; nvidia-smi -L)"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert visible_gpus()[0] == [1]
    assert gpus_problem([0]).startswith(
        "indices of this machine's GPUs (1; nvidia-smi -L, CUDA_VISIBLE_DEVICES"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus_problem([0]).startswith("no GPUs: this machine has none visible")


def test_reproduce_and_report_refuse_a_missing_store(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert reproduce.main(["0123abcd", "--tracking-uri", missing]) == 2
    assert report.main(["--study", "default", "--tracking-uri", missing]) == 2
    assert report.main(["--experiment", "study", "--tracking-uri", f"{tmp_path / 'mlruns'}"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert (
        errors[0]
        == f"study.reproduce: error: --tracking-uri {missing}: no MLflow store at {tmp_path}/runs/mlflow.db"
    )
    assert errors[1].startswith("study.report: error: --tracking-uri sqlite:///")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


def test_an_unknown_keras_backend_is_one_line(tmp_path):
    done = run_command("train", "data=digits", cwd=tmp_path, env={"KERAS_BACKEND": "nonsense"})
    assert_refused(done, "study.train: error: KERAS_BACKEND: expected one of tensorflow, jax", tmp_path)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--seeds", "-2"], "argument --seeds: expected an integer >= 0, got '-2'"),
        (["--tolerance", "nan"], "nan"),
    ],
)
def test_reproduce_refuses_negative_or_missing_numbers(tmp_path, option, expected):
    done = run_command("reproduce", "0123abcd", *option, cwd=tmp_path)
    assert done.returncode == 2 and expected in done.stderr.splitlines()[-1], done.stderr


@pytest.mark.slow  # a real run, deleted, then reproduced: about 15 s
def test_reproducing_a_deleted_run_is_one_line(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=store)
    run = client.create_run(client.create_experiment("study"))
    client.set_terminated(run.info.run_id)
    client.delete_run(run.info.run_id)
    done = run_command("reproduce", run.info.run_id, "--tracking-uri", store, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"study.reproduce: error: run {run.info.run_id}: deleted in {store}")


def test_an_infinite_search_space_bound_is_one_line(tmp_path):
    (tmp_path / "conf" / "search_space").mkdir(parents=True)
    (tmp_path / "conf" / "search_space" / "endless.yaml").write_text(
        "optimizer.learning_rate: {type: float, low: 1.0e-4, high: .inf}\n"
    )
    done = run_command("sweep", "--config-dir", "conf", "data=digits", "search_space=endless", cwd=tmp_path)
    expected = "study.sweep: error: search_space.optimizer.learning_rate: expected finite low and high"
    assert_refused(done, expected, tmp_path)


def test_an_optuna_database_given_as_the_tracking_store_and_the_reverse(tmp_path):
    """Each tool would write its tables into the other's file before refusing it."""
    optuna_db, mlflow_db = tmp_path / "optuna.db", tmp_path / "mlflow.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{optuna_db}")
    MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}").search_experiments()
    before = {path: path.read_bytes() for path in (optuna_db, mlflow_db)}
    done = run_command("train", "data=digits", f"mlflow.tracking_uri=sqlite:///{optuna_db}", cwd=tmp_path)
    expected = (
        f"study.train: error: mlflow.tracking_uri: expected an MLflow database, but {optuna_db} is Optuna's"
    )
    assert_refused(done, expected, tmp_path)
    done = run_command("sweep", *SWEEP_BASE, f"study.storage=sqlite:///{mlflow_db}", cwd=tmp_path)
    expected = f"study.sweep: error: study.storage: expected an Optuna database, but {mlflow_db} is MLflow's"
    assert_refused(done, expected, tmp_path)
    assert {path: path.read_bytes() for path in before} == before


def test_an_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    done = run_command("sweep", *SWEEP_BASE, "study.output_dir=afile/study", cwd=tmp_path)
    expected = "study.sweep: error: study.output_dir: expected a folder that can be made, but afile is a file"
    assert_refused(done, expected, tmp_path)


def test_report_of_an_unreachable_tracking_server_is_one_line(tmp_path):
    url = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    done = run_command("report", "--experiment", "study", "--tracking-uri", url, cwd=tmp_path, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("study.report: error: --tracking-uri: cannot use http://alice:***@127.0.0.1:")


@pytest.mark.slow  # a real session: workers start, the timeout passes first
def test_a_timeout_that_ends_the_session_before_any_trial_is_one_line(tmp_path):
    done = run_command("sweep", *SWEEP_BASE, "study.timeout=1", cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower() or "warn" in line.lower()]
    assert done.returncode == 1, done.stderr[-2000:]
    assert lines == [
        "study.sweep: error: study default: 0 of 2 trials done: study.timeout passed, none finished; "
        "0 still RUNNING. Run the command again to resume."
    ]


@pytest.mark.slow  # a throwaway PostgreSQL cluster
def test_an_optuna_database_given_as_the_tracking_store_on_postgresql_and_the_reverse(tmp_path, postgres):
    optuna.create_study(study_name="s", storage=f"{postgres}/optuna")
    MlflowClient(tracking_uri=f"{postgres}/mlflow").search_experiments()
    done = run_command("train", "data=digits", f"mlflow.tracking_uri={postgres}/optuna", cwd=tmp_path)
    assert_refused(
        done, "study.train: error: mlflow.tracking_uri: expected an MLflow database, but", tmp_path
    )
    assert "is Optuna's" in done.stderr
    done = run_command("sweep", *SWEEP_BASE, f"study.storage={postgres}/mlflow", cwd=tmp_path)
    assert_refused(done, "study.sweep: error: study.storage: expected an Optuna database, but", tmp_path)
    tables = set(sqlalchemy.inspect(sqlalchemy.create_engine(f"{postgres}/mlflow")).get_table_names())
    assert "studies" not in tables  # Optuna wrote nothing into MLflow's database


def read_only_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`study.train` with tmp_path/ro mounted read-only (a bind mount in a mount namespace of
    its own: chmod does not stop root, which CI runs as)."""
    read_only = tmp_path / "ro"
    read_only.mkdir(exist_ok=True)
    inner = (
        f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} && "
        f"exec {sys.executable} -m study.train data=digits {' '.join(overrides)}"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", inner],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("runs_dir=ro/runs", "[Errno 30] Read-only file system: 'ro/runs'"),
        (
            "mlflow.tracking_uri=sqlite:///ro/mlflow.db",
            "mlflow.tracking_uri: expected a SQLite database file",
        ),
        (
            "mlflow.artifact_location=ro/artifacts",
            "mlflow.artifact_location: expected a folder that can be made",
        ),
    ],
)
def test_a_read_only_folder_is_one_line(tmp_path, override, expected):
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("needs unshare -m (root, as in CI) to mount a read-only folder")
    done = read_only_run(tmp_path, override)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("study.train: error: ") and expected in lines[0], lines[0]
    assert "ro" in lines[0]
    assert not list((tmp_path / "ro").iterdir())
