"""The winner is registered and crowned once per study, however many drivers finish it, named
by the registry's `champion` alias, and finishing the study again completes what a driver
killed part way left."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from optuna.trial import create_trial

from study.core.names import (
    BEST_MODEL_TAG,
    BEST_RUN_TAG,
    BEST_TEST_METRIC,
    CHAMPION_ALIAS,
    CHECKPOINT_TAG,
    LOGGED_BY_TAG,
    MLFLOW_RUN_ATTR,
    MODEL_URI_TAG,
    SERVING_INPUT_KEY,
    SERVING_URI_KEY,
    WINNER_TAG,
)
from tests.helpers import client_for


def test_drivers_finishing_one_study_together_register_its_winner_once(tmp_path):
    """Two drivers that share a study see it done at the same moment and each log and register
    the winner. Here the other driver registered it a moment before this one: this driver's
    version and model are dropped and both name the first one."""
    import keras
    import numpy as np

    from study.reporting.registry import name_champion, register_once
    from study.reporting.winner import log_winner_model
    from study.tracking.lineage import log_keras_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    images = np.random.default_rng(0).random((8, 4), dtype=np.float32)

    def versions() -> list[str]:
        return sorted(str(version.version) for version in client.search_model_versions("name = 'winner'"))

    def logged() -> list:
        return client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")

    log_keras_model(uri, run_id, model, images, "winner", {CHECKPOINT_TAG: "aaa"})  # the other driver
    mine = log_keras_model(uri, run_id, model, images).model_id  # this one, at the same moment
    tags = {CHECKPOINT_TAG: "aaa"}
    assert register_once(client, "winner", run_id, mine, tags, logged_here=True) == "models:/winner/1"
    assert versions() == ["1"]
    assert len(logged()) == 1  # this driver's copy is gone with its version

    # A driver that comes later finds the version and logs nothing: the run names it.
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == "models:/winner/1"
    assert client.get_run(run_id).data.tags[MODEL_URI_TAG] == "models:/winner/1"
    assert len(logged()) == 1
    # A resumed study whose winner and checkpoint did not change logs nothing new.
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == "models:/winner/1"
    # A promotion improved the winner's checkpoint: a new version.
    assert log_winner_model(client, run_id, model, "bbb", images, "winner") == "models:/winner/3"
    assert versions() == ["1", "3"]
    assert client.get_model_version("winner", "3").tags[CHECKPOINT_TAG] == "bbb"
    # The champion alias follows the study's current winner; naming it again changes nothing.
    for uri, champion in (("models:/winner/1", "1"), ("models:/winner/3", "3"), ("models:/winner/3", "3")):
        name_champion(client, uri)
        assert str(client.get_registered_model("winner").aliases[CHAMPION_ALIAS]) == champion


def test_one_winner_per_study_when_a_resumed_study_crowns_another_trial(tmp_path):
    from study.reporting.winner import crown

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    parent, first, second = (client.create_run(experiment_id).info.run_id for _ in range(3))

    crown(client, parent, first)
    client.set_tag(parent, BEST_RUN_TAG, first)  # what the first session's finish leaves
    crown(client, parent, second)  # a resumed session: another trial won
    crown(client, parent, second)  # a second driver of that session: the tag is gone already

    winners = client.search_runs([experiment_id], filter_string=f"tags.`{WINNER_TAG}` = 'true'")
    assert [run.info.run_id for run in winners] == [second]


# Where the driver died while it made the winner's model, in the order it makes it.
DIED_WHILE = ("logging", "registering", "tagging_the_run", "describing", "nothing")


@pytest.fixture
def done_study(tmp_path, make_config):
    """What finish() finds when a study's trials are done: one complete trial whose run a real
    training left behind (config.yaml, checkpoints/best.keras), and the study's parent run."""
    import keras

    from study.training.data import load_dataset
    from study.training.run import train

    cfg = make_config("trainer.epochs=1", model="softmax")
    metrics = train(cfg, evaluate_test=False)
    client = client_for(cfg)
    experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id
    (run,) = client.search_runs([experiment_id])
    study = optuna.create_study(
        study_name="winners", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize"
    )
    study.add_trial(
        create_trial(value=metrics["best_val_accuracy"], user_attrs={MLFLOW_RUN_ATTR: run.info.run_id})
    )
    checkpoint = Path(client.download_artifacts(run.info.run_id, "checkpoints/best.keras", str(tmp_path)))
    return SimpleNamespace(
        study=study,
        client=client,
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        parent_run_id=client.create_run(experiment_id).info.run_id,
        folder=tmp_path,
        model=keras.saving.load_model(checkpoint),
        checkpoint_sha256=hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        images=load_dataset(cfg.data, cfg.trainer.seed).x_test,
    )


def finish_winner(done) -> dict:
    from study.reporting.winner import evaluate_winner

    return evaluate_winner(done.study, done.client, done.parent_run_id, done.folder, "winner")


def die_while(step: str, done) -> None:
    """Leave the winner's model as a driver killed at `step` leaves it, with the calls the
    driver makes up to there: the store holds what a real kill leaves."""
    from study.reporting.winner import log_winner_model
    from study.tracking.lineage import log_keras_model

    uri, checkpoint = done.client.tracking_uri, {CHECKPOINT_TAG: done.checkpoint_sha256}
    if step == "logging":
        leave_pending_model(done)
    elif step == "registering":
        log_keras_model(uri, done.run_id, done.model, done.images, model_tags=checkpoint)
    elif step == "tagging_the_run":
        log_keras_model(uri, done.run_id, done.model, done.images, "winner", checkpoint, checkpoint)
    elif step == "describing":
        log_winner_model(done.client, done.run_id, done.model, done.checkpoint_sha256, done.images, "winner")
    else:
        finish_winner(done)


PENDING_MODEL = """
import os, signal, socket, sys
from mlflow import MlflowClient
from study.core.names import CHECKPOINT_TAG, LOGGED_BY_TAG
client = MlflowClient(sys.argv[1])
run = client.get_run(sys.argv[2])
tags = {CHECKPOINT_TAG: sys.argv[3], LOGGED_BY_TAG: f"{socket.gethostname()}:{os.getpid()}"}
client.create_logged_model(run.info.experiment_id, "model", run.info.run_id, tags=tags)
os.kill(os.getpid(), signal.SIGKILL)
"""


def leave_pending_model(done) -> None:
    """A driver killed while it logged the winner: its model made (PENDING, as MLflow makes it
    first) and never finished, by a process that is gone."""
    arguments = [done.client.tracking_uri, done.run_id, done.checkpoint_sha256]
    killed = subprocess.run([sys.executable, "-c", PENDING_MODEL, *arguments], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (pending,) = models_of(done)
    assert pending.status == LoggedModelStatus.PENDING


def models_of(done) -> list:
    return done.client.search_logged_models(
        [done.experiment_id], filter_string=f"source_run_id = '{done.run_id}'"
    )


def assert_one_described_winner(done, summary: dict) -> None:
    client = done.client
    (version,) = client.search_model_versions("name = 'winner'")
    (logged,) = models_of(done)  # the run shows one model, ready to serve
    assert logged.status == LoggedModelStatus.READY and version.source == f"models:/{logged.model_id}"
    assert version.run_id == done.run_id and version.tags[CHECKPOINT_TAG] == done.checkpoint_sha256
    assert version.description.startswith("Winner of study winners: trial 0, val_accuracy ")
    assert "Input: raw images (N, 12, 12, 1) or (N, 12, 12), uint8 or float pixel values 0..255" in (
        version.description
    )
    assert version.tags["study"] == "winners" and version.tags["trial"] == "0"
    assert float(version.tags["test_accuracy"]) == pytest.approx(summary[BEST_TEST_METRIC], abs=1e-4)
    uri = f"models:/winner/{version.version}"
    assert summary[BEST_MODEL_TAG] == uri
    tags = client.get_run(done.run_id).data.tags
    assert tags[WINNER_TAG] == "true" and tags[MODEL_URI_TAG] == uri
    parent = client.get_run(done.parent_run_id).data.tags
    assert parent[BEST_RUN_TAG] == done.run_id and parent[BEST_MODEL_TAG] == uri
    # models:/winner@champion is the winner, and it answers the raw test images the study wrote.
    assert str(client.get_registered_model("winner").aliases[CHAMPION_ALIAS]) == str(version.version)
    assert summary[SERVING_URI_KEY] == f"models:/winner@{CHAMPION_ALIAS}"
    request = json.loads(Path(summary[SERVING_INPUT_KEY]).read_text())
    images = np.array(request["inputs"])
    assert images.shape == (5, 12, 12, 1) and images.max() > 1 and images.dtype.kind == "i"
    answer = mlflow.pyfunc.load_model(summary[SERVING_URI_KEY]).predict(images.astype("uint8"))
    assert answer["class"].between(0, 9).all() and len(answer) == 5


@pytest.mark.parametrize("step", DIED_WHILE)
def test_finishing_the_study_again_completes_the_winner_a_killed_driver_left(done_study, step):
    """A driver killed at each step of making the winner's model, then the study finished
    again: one READY model on the winner's run, one registered version with its description
    and tags, the winner crowned; nothing made twice."""
    die_while(step, done_study)
    made = {m.model_id for m in models_of(done_study) if m.status == LoggedModelStatus.READY}
    assert_one_described_winner(done_study, finish_winner(done_study))
    if made:  # a model logged READY before the kill is the one registered, not logged again
        assert {m.model_id for m in models_of(done_study)} == made


def test_a_model_another_driver_is_logging_right_now_is_left_alone(tmp_path):
    """Two drivers finishing one study together: the one that comes second must not delete
    the model that the first is logging (PENDING until its artifacts are written)."""
    from study.reporting.winner import ABANDONED_AFTER_S, logger_gone, remove_abandoned_models

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    here = client.create_logged_model(
        experiment_id, "model", run_id, tags={LOGGED_BY_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    )
    elsewhere = client.create_logged_model(
        experiment_id, "model", run_id, tags={LOGGED_BY_TAG: "other-host:12"}
    )

    remove_abandoned_models(client, run_id)
    for model in (here, elsewhere):
        assert client.get_logged_model(model.model_id).status == LoggedModelStatus.PENDING
    # Another machine's driver is given up on once its model has been PENDING far longer than
    # logging takes; this machine's while its process runs.
    later = time.time() + ABANDONED_AFTER_S + 60
    assert logger_gone(client.get_logged_model(elsewhere.model_id), now=later)
    assert not logger_gone(client.get_logged_model(here.model_id), now=later)
