"""A study as a user watches it: `python -m study.sweep` in a real terminal (a pseudo-terminal),
then what it left in MLflow: the registered winner loaded in a fresh process, dataset inputs,
system metrics, the plots."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from mlflow import MlflowClient

from study.core.native_logs import NATIVE_LINE
from tests.helpers import TINY_VALIDATION

NOISE = re.compile(r"cuda|cuInit|NodeDef|absl::InitializeLog|oneDNN", re.IGNORECASE)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STUDY = "watched"
# A fresh process: the registered model by name, the test images, the accuracy.
PREDICT = """
import sys
import mlflow, numpy as np
from omegaconf import OmegaConf
from study.training.data import load_dataset
uri, path, validation_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = mlflow.pyfunc.load_model(uri)
cfg = {"name": "mnist", "path": path, "validation_size": validation_size, "max_train_samples": None}
data = load_dataset(OmegaConf.create(cfg), 42)
answer = model.predict(np.rint(data.x_test * 255).astype("uint8"))  # raw pixels, as the files hold them
print("accuracy", float(np.mean(answer["class"] == data.y_test)))
"""


def run_in_terminal(command: list[str], cwd, timeout: float = 400.0) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as stdin, stdout and stderr; returns (status, screen text)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    process = subprocess.Popen(command, cwd=cwd, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    chunks = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            process.kill()
    finally:
        os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def watched_study(tmp_path_factory, tiny_idx_dir):
    root = tmp_path_factory.mktemp("watched")
    space = root / "conf" / "search_space"
    space.mkdir(parents=True)
    (space / "tiny.yaml").write_text(
        "model: {type: categorical, choices: [softmax, mlp]}\n"
        "optimizer: {type: categorical, choices: [sgd, adam]}\n"
        "sgd_learning_rate: {type: float, low: 1.0e-2, high: 0.5, log: true, "
        "target: optimizer.learning_rate, when: {optimizer: [sgd]}}\n"
        "adaptive_learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true, "
        "target: optimizer.learning_rate, when: {optimizer: [adam]}}\n"
    )
    command = [
        sys.executable,
        "-m",
        "study.sweep",
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "search_space=tiny",
        f"data.path={tiny_idx_dir}",
        f"data.validation_size={TINY_VALIDATION}",
        "model=mlp",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "study.n_trials=3",
        f"study.name={STUDY}",
        "study.heartbeat_interval=2",
        "pruner=none",
        "scheduler=none",  # one trial per configuration, each its whole budget: epoch 2/2
        "mlflow.system_metrics_interval=0.5",
    ]
    status, screen = run_in_terminal(command, cwd=root)
    assert status == 0, screen[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/runs/mlflow.db")
    return root, screen, client


def test_terminal_shows_live_progress_and_where_to_look_further(watched_study):
    root, screen, _ = watched_study
    text = ANSI.sub("", screen)
    assert f"study {STUDY}: 3 trials, 1 worker; worker logs: runs/studies/{STUDY}/logs/worker_N.log" in text
    assert re.search(r"trial\s+values\s+epoch\s+val_accuracy\s+elapsed", text), text[-3000:]  # the live table
    assert re.search(r"trial +\d complete +val_accuracy \d\.\d{4} +epoch 2/2", text)
    assert "3/3 done (3 complete, 0 pruned), 0 failed, 0 running" in text
    assert "writing Optuna's plots" in text and "evaluating the winner" in text  # no silent gap
    assert re.search(r"winner: trial \d, val_accuracy \d\.\d{4}, test_accuracy \d\.\d{4}", text)
    assert "over the baseline" in text or "the baseline won" in text
    assert f"python -m study.report --study {STUDY}" in text
    assert (
        "python -m study.reproduce " in text
        and "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db" in text
    )
    assert f"mlflow models serve -m models:/{STUDY}@champion" in text and "ask it  " in text
    assert not NOISE.search(text) and not any(NATIVE_LINE.match(line) for line in text.splitlines()), text
    assert not (root / "outputs").exists() and not (root / "mlruns").exists()  # all under runs/


def test_registered_winner_predicts_in_a_fresh_process(watched_study, tiny_idx_dir):
    root, _, client = watched_study
    parent = next(
        run
        for run in client.search_runs([client.get_experiment_by_name("study").experiment_id])
        if run.data.tags.get("study.role") == "parent"
    )
    logged_accuracy = parent.data.metrics["best_trial_test_accuracy"]
    version = client.get_model_version(STUDY, "1")
    assert version.run_id == parent.data.tags["best_trial_run_id"]
    winner = client.get_run(version.run_id)
    (logged,) = winner.outputs.model_outputs  # the Models column of the winner's run
    assert client.get_logged_model(logged.model_id).experiment_id == winner.info.experiment_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(logged_accuracy, abs=1e-4)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/runs/mlflow.db"}
    command = [
        sys.executable,
        "-c",
        PREDICT,
        f"models:/{STUDY}/latest",
        str(tiny_idx_dir),
        str(TINY_VALIDATION),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(done.stdout.split("accuracy")[-1])
    assert accuracy == pytest.approx(logged_accuracy, abs=1e-6)


def test_runs_carry_dataset_system_metrics_and_interactive_plots(watched_study, tiny_idx_dir):
    root, _, client = watched_study
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    trials = [run for run in runs if run.data.tags.get("study.role") != "parent"]
    assert len(trials) == 3
    for run in trials:
        (dataset_input,) = run.inputs.dataset_inputs
        dataset = dataset_input.dataset
        assert dataset.name == "mnist" and str(tiny_idx_dir) in dataset.source
        assert run.data.tags["data.digest"].removeprefix("sha256:").startswith(dataset.digest)
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
            run.data.metrics
        )
    parent = next(run for run in runs if run.data.tags.get("study.role") == "parent")
    plots = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/interactive.html", "plots/optimization_history.png"} <= plots
    html = (root / "runs" / "studies" / STUDY / "plots" / "interactive.html").read_text()
    assert "val_accuracy" in html and "Objective Value" not in html
    header = (root / "runs" / "studies" / STUDY / "leaderboard.csv").read_text().splitlines()[0]
    assert "optimizer.learning_rate" in header and "sgd_learning_rate" not in header
