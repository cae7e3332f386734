"""The study's winner: evaluated once on the test set, crowned on its run and the parent run,
its best checkpoint logged as the MLflow model that serves raw images (study.tracking.serving)
and registered (once, however many drivers finish the study together) under the `champion`
alias. Every step converges: a driver killed part way leaves what it made for the next one
that finishes the study (the same command again) to reuse and complete."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.exceptions import MlflowException

from study.config.checks import checked_config
from study.core.config_files import load_logged_config
from study.core.files import publish, publish_text
from study.core.names import (
    BEST_MODEL_TAG,
    BEST_RUN_TAG,
    BEST_TEST_METRIC,
    CHAMPION_ALIAS,
    CHECKPOINT_TAG,
    EXPERIMENT_ID_KEY,
    LOGGED_BY_TAG,
    MLFLOW_RUN_ATTR,
    MODEL_URI_TAG,
    SERVING_INPUT_KEY,
    SERVING_URI_KEY,
    WINNER_TAG,
)
from study.core.processes import gone_from_this_machine, of_this_machine, process_identity
from study.reporting.registry import (
    describe_version,
    first_version_of,
    name_champion,
    register_once,
    version_description,
    version_tags,
)
from study.search.ranking import best_trial
from study.tracking.lineage import log_keras_model
from study.tracking.packaging import INPUT_EXAMPLE_SIZE, preprocessing_facts, raw_images
from study.tracking.runs import RunTracker
from study.training.data import load_dataset

if TYPE_CHECKING:  # Keras is imported where a model is evaluated: config errors must not wait for it
    import keras

log = logging.getLogger(__name__)

# Logging one model takes seconds: one of another machine still PENDING after this has no
# live driver (this machine's drivers are checked by their pid).
ABANDONED_AFTER_S = 15 * 60


def evaluate_winner(
    study: optuna.Study,
    client: MlflowClient,
    parent_run_id: str,
    folder: Path,
    registered_model: str | None = None,
) -> dict:
    """The best trial's best checkpoint, evaluated once on the test set and logged on the
    parent; the model logged as an MLflow model on the winner's run and registered under
    `registered_model` (when not null)."""
    import keras
    from sklearn.metrics import ConfusionMatrixDisplay

    best = best_trial(study.get_trials(deepcopy=False))  # with scheduler=asha: the best of the highest rung
    run_id = best.user_attrs[MLFLOW_RUN_ATTR]
    with tempfile.TemporaryDirectory(prefix="study-winner-") as scratch:
        config_file = client.download_artifacts(run_id, "config.yaml", scratch)
        checkpoint = client.download_artifacts(run_id, "checkpoints/best.keras", scratch)
        cfg = checked_config(load_logged_config(config_file, name=f"run {run_id}: config.yaml"))
        data = load_dataset(cfg.data, cfg.trainer.seed)
        model = keras.saving.load_model(checkpoint)
        checkpoint_sha256 = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        test_loss, test_accuracy = model.evaluate(
            data.x_test, data.y_test, batch_size=cfg.trainer.eval_batch_size, verbose=0
        )
        logits = model.predict(data.x_test, batch_size=cfg.trainer.eval_batch_size, verbose=0)
        tags = version_tags(best, float(test_accuracy), study.study_name)
        model_uri = log_winner_model(
            client, run_id, model, checkpoint_sha256, data.x_test, registered_model, tags
        )
        facts = preprocessing_facts(model, data.x_test, data.source)
    request = folder / "serving_input.json"  # raw test images: a request to send the served winner
    images = raw_images(data.x_test[:INPUT_EXAMPLE_SIZE], facts)
    publish_text(request, json.dumps({"inputs": images.tolist()}))
    predictions = np.argmax(logits, axis=1)
    display = ConfusionMatrixDisplay.from_predictions(data.y_test, predictions, colorbar=False)
    display.ax_.set_title(f"trial {best.number} on the test set: accuracy {test_accuracy:.4f}")
    matrix = publish(folder / "confusion_matrix.png", functools.partial(display.figure_.savefig, dpi=100))
    client.log_artifact(parent_run_id, str(matrix))
    plt.close(display.figure_)
    summary = {
        "best_trial": best.number,
        "best_val_accuracy": best.value,
        "best_trial_test_loss": float(test_loss),
        BEST_TEST_METRIC: float(test_accuracy),
        BEST_RUN_TAG: run_id,
        BEST_MODEL_TAG: model_uri,
    }
    if registered_model:  # always: a driver killed after it registered the version left it undescribed
        description = version_description(best, float(test_accuracy), study.study_name, facts)
        describe_version(client, model_uri, tags, description)
        name_champion(client, model_uri)
    crown(client, parent_run_id, run_id)
    parent = RunTracker(client, parent_run_id)
    parent.log_metrics({key: value for key, value in summary.items() if not key.endswith(("_id", "_uri"))})
    parent.set_tags({BEST_RUN_TAG: run_id, BEST_MODEL_TAG: model_uri})
    parent.flush()
    serving_uri = f"models:/{registered_model}@{CHAMPION_ALIAS}" if registered_model else model_uri
    return {
        **summary,
        SERVING_URI_KEY: serving_uri,
        SERVING_INPUT_KEY: str(request),
        EXPERIMENT_ID_KEY: client.get_run(parent_run_id).info.experiment_id,
    }


def crown(client: MlflowClient, parent_run_id: str, run_id: str) -> None:
    """Tag the winner's run, and untag the run that an earlier session of the study crowned:
    a search for `tags.study.winner = 'true'` finds one run per study."""
    earlier = client.get_run(parent_run_id).data.tags.get(BEST_RUN_TAG)
    if earlier and earlier != run_id:
        with contextlib.suppress(MlflowException):  # another driver of the study untagged it
            client.delete_tag(earlier, WINNER_TAG)
    # Through log_batch, like every tag here: MLflow retries its write when two drivers that
    # finish one study together tag the same run (its single-tag write fails the second one).
    RunTracker(client, run_id).set_tags({WINNER_TAG: "true"})


def log_winner_model(
    client: MlflowClient,
    run_id: str,
    model: keras.Model,
    checkpoint_sha256: str,
    images: np.ndarray,
    registered_model: str | None,
    version_tags: Mapping[str, str] | None = None,
) -> str:
    """The winner as an MLflow model on its own run: its URI (models:/NAME/VERSION when
    registered under `registered_model`, the version made with `version_tags`). A resumed
    study whose winner and its checkpoint did not change logs nothing new, and one finished
    again after its driver died part way completes what that driver left: see winner_model."""
    tags = client.get_run(run_id).data.tags
    logged = tags.get(MODEL_URI_TAG)
    if (
        logged
        and tags.get(CHECKPOINT_TAG) == checkpoint_sha256
        and (registered_model is None or logged.startswith(f"models:/{registered_model}/"))
    ):
        return logged
    remove_abandoned_models(client, run_id)
    uri = winner_model(client, run_id, model, checkpoint_sha256, images, registered_model, version_tags or {})
    RunTracker(client, run_id).set_tags({MODEL_URI_TAG: uri, CHECKPOINT_TAG: checkpoint_sha256})
    return uri


def winner_model(
    client: MlflowClient,
    run_id: str,
    model: keras.Model,
    checkpoint_sha256: str,
    images: np.ndarray,
    registered_model: str | None,
    version_tags: Mapping[str, str],
) -> str:
    """Each step made once, whichever driver made it: a version already made from the run and
    checkpoint is the winner's (its driver died before it tagged the run, or another driver
    registered it a moment ago); a model already logged READY with the checkpoint is
    registered, not logged again (its driver died before it registered it)."""
    if registered_model and (first := first_version_of(client, registered_model, run_id, checkpoint_sha256)):
        return f"models:/{registered_model}/{first}"
    model_id = ready_model_of(client, run_id, checkpoint_sha256)
    logged_here = model_id is None
    if logged_here:
        model_tags = {
            CHECKPOINT_TAG: checkpoint_sha256,
            LOGGED_BY_TAG: process_identity(),
        }
        model_id = log_keras_model(client.tracking_uri, run_id, model, images, model_tags=model_tags).model_id
    if not registered_model:
        return f"models:/{model_id}"
    tags = {**version_tags, CHECKPOINT_TAG: checkpoint_sha256}
    return register_once(client, registered_model, run_id, model_id, tags, logged_here)


def models_of_run(client: MlflowClient, run_id: str) -> list[LoggedModel]:
    """The logged models of a run that are not deleted, oldest first."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return sorted(found, key=lambda logged: logged.creation_timestamp)


def ready_model_of(client: MlflowClient, run_id: str, checkpoint_sha256: str) -> str | None:
    """The oldest READY model of the run logged from this checkpoint: every driver picks the same one."""
    for logged in models_of_run(client, run_id):
        if logged.status == LoggedModelStatus.READY and logged.tags.get(CHECKPOINT_TAG) == checkpoint_sha256:
            return logged.model_id
    return None


def remove_abandoned_models(client: MlflowClient, run_id: str) -> None:
    """A driver killed while it logged the winner leaves its model PENDING for good: deleted
    here once that driver is gone. A PENDING model of a live driver is left alone: it is the
    winner being logged right now by another driver that finishes the study (deleting it
    would fail that driver's logging)."""
    for logged in models_of_run(client, run_id):
        if logged.status == LoggedModelStatus.PENDING and logger_gone(logged):
            client.delete_logged_model(logged.model_id)
            log.info("deleted model %s: its driver died while it logged it", logged.model_id)


def logger_gone(logged: LoggedModel, now: float | None = None) -> bool:
    """Whether the process that logs a model is gone, as far as this machine can tell: one of
    this machine that no longer runs; another machine's after longer than logging takes."""
    logged_by = logged.tags.get(LOGGED_BY_TAG, "")
    if of_this_machine(logged_by):
        return gone_from_this_machine(logged_by)
    now = time.time() if now is None else now
    return now - logged.creation_timestamp / 1000 > ABANDONED_AFTER_S
