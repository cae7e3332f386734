"""A newcomer's path from a study to a served winner, as the study's summary prints it: a real
`python -m study.sweep` on scikit-learn's digits, then `mlflow models serve -m
models:/NAME@champion` on the other Keras backend, asked with raw digits over HTTP."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from mlflow import MlflowClient

from study.config.checks import checked_config
from study.core.names import BEST_TEST_METRIC, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, TRIAL_NUMBER_TAG
from study.tracking.packaging import raw_images
from study.training.data import load_dataset
from tests.helpers import compose_config, free_port, run_command

NAME = "digits-winner"
EXPECTED = "expected images (N, 8, 8, 1) or (N, 8, 8), uint8 or float pixel values 0..16"


def start_server(tmp_path, port: int, log) -> subprocess.Popen:
    """The summary's serve command, on JAX: the model trained on TensorFlow, a .keras file is
    backend-independent."""
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///runs/mlflow.db", "KERAS_BACKEND": "jax"}
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_serving(url: str, server: subprocess.Popen, log, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")


def ask(url: str, images) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": np.asarray(images).tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def classes(answer: dict) -> np.ndarray:
    """The answer's classes, each checked against its probabilities."""
    probabilities = np.array([row["probabilities"] for row in answer["predictions"]])
    predicted = np.array([row["class"] for row in answer["predictions"]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))
    return predicted


@pytest.mark.slow  # a study, then a model server: about 70 s on 2 cores
def test_the_registered_winner_serves_raw_digits(tmp_path):
    overrides = [
        "data=digits",
        "model=mlp",
        "study.n_trials=1",
        "trainer.epochs=2",
        f"study.registered_model={NAME}",
    ]
    study = run_command("sweep", *overrides, cwd=tmp_path)
    assert study.returncode == 0, study.stderr[-3000:]

    # What the summary tells a newcomer: the UI's model-training view, the server, a request.
    assert re.search(r"^  MLflow UI +mlflow ui --backend-store-uri \S+$", study.stdout, re.M)
    ui_page = r"then open +http://127.0.0.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning$"
    assert re.search(ui_page, study.stdout, re.M)
    assert f"mlflow models serve -m models:/{NAME}@champion --env-manager local" in study.stdout
    (curl,) = re.findall(r"^\s+ask it\s+(curl .*)$", study.stdout, re.M)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    (trial,) = client.search_runs([experiment.experiment_id], f"tags.`{TRIAL_NUMBER_TAG}` = '0'")
    assert re.fullmatch(r"mlp-adam-lr[0-9.e-]+-d[0-9.]+", trial.info.run_name), trial.info.run_name
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == trial.info.run_id
    winner_accuracy = client.get_run(trial.data.tags["mlflow.parentRunId"]).data.metrics[BEST_TEST_METRIC]

    # The study's own test set, raw: 0..16 pixels as scikit-learn has them, no channel axis.
    cfg = checked_config(compose_config("train", ["data=digits"]))
    data = load_dataset(cfg.data, cfg.trainer.seed)
    raw = raw_images(data.x_test, {"pixel_factor": 16, "pixel_max": 16})[..., 0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "w") as log:
        server = start_server(tmp_path, port, log)
        try:
            wait_until_serving(url, server, tmp_path / "serve.log")
            ask_the_server(url, raw, data.y_test, curl.replace("5001", str(port)), tmp_path, winner_accuracy)
        finally:
            server.terminate()
            server.wait(timeout=60)


def ask_the_server(
    url: str, raw: np.ndarray, labels: np.ndarray, curl: str, tmp_path, winner_accuracy: float
):
    """Raw digits, many, one and a few; the summary's curl; bad requests."""
    status, answer = ask(url, raw)
    assert status == 200, answer
    accuracy = float((classes(answer) == labels).mean())
    assert accuracy > 0.5 and abs(accuracy - winner_accuracy) <= 0.01, (accuracy, winner_accuracy)
    # One image alone, and a few with the channel axis: the same classes.
    status, one = ask(url, raw[0])
    assert status == 200 and classes(one).tolist() == classes(answer)[:1].tolist()
    status, few = ask(url, raw[:3, ..., np.newaxis].astype("float64"))
    assert status == 200 and classes(few).tolist() == classes(answer)[:3].tolist()
    # The summary's curl, as printed, with the request file the study wrote.
    sent = subprocess.run(shlex.split(curl), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert len(classes(json.loads(sent.stdout))) == 5, sent.stdout[-2000:]
    # A bad request: one line that says what is expected, no dump of the request.
    for bad in (np.zeros((2, 28, 28), dtype="uint8"), [["a"] * 8] * 8, (raw[:2] * 16).tolist()):
        status, refused = ask(url, bad)
        assert status == 400, refused
        assert "\n" not in refused["message"] and refused["message"].endswith(EXPECTED), refused
