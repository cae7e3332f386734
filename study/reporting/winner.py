"""The study's winner: evaluated once on the test set, crowned on its run and the parent run,
its best checkpoint logged as an MLflow model and registered (once, however many drivers
finish the study together)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from study.config.checks import checked_config
from study.core.names import (
    BEST_MODEL_TAG,
    BEST_RUN_TAG,
    BEST_TEST_METRIC,
    CHECKPOINT_TAG,
    METRIC,
    MLFLOW_RUN_ATTR,
    MODEL_URI_TAG,
    WINNER_TAG,
)
from study.search.ranking import best_trial
from study.tracking.lineage import log_keras_model
from study.tracking.runs import RunTracker
from study.training.data import load_dataset

if TYPE_CHECKING:  # Keras is imported where a model is evaluated: config errors must not wait for it
    import keras

log = logging.getLogger(__name__)


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
        cfg = checked_config(OmegaConf.load(config_file))
        data = load_dataset(cfg.data, cfg.trainer.seed)
        model = keras.saving.load_model(checkpoint)
        checkpoint_sha256 = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        test_loss, test_accuracy = model.evaluate(
            data.x_test, data.y_test, batch_size=cfg.trainer.eval_batch_size, verbose=0
        )
        logits = model.predict(data.x_test, batch_size=cfg.trainer.eval_batch_size, verbose=0)
        model_uri, registered_here = log_winner_model(
            client, run_id, model, checkpoint_sha256, data.x_test, registered_model
        )
    predictions = np.argmax(logits, axis=1)
    display = ConfusionMatrixDisplay.from_predictions(data.y_test, predictions, colorbar=False)
    display.ax_.set_title(f"trial {best.number} on the test set: accuracy {test_accuracy:.4f}")
    display.figure_.savefig(folder / "confusion_matrix.png", dpi=100)
    client.log_artifact(parent_run_id, str(folder / "confusion_matrix.png"))
    plt.close(display.figure_)
    summary = {
        "best_trial": best.number,
        "best_val_accuracy": best.value,
        "best_trial_test_loss": float(test_loss),
        BEST_TEST_METRIC: float(test_accuracy),
        BEST_RUN_TAG: run_id,
        BEST_MODEL_TAG: model_uri,
    }
    if registered_here:
        describe_version(client, model_uri, best, float(test_accuracy), study.study_name)
    crown(client, parent_run_id, run_id)
    parent = RunTracker(client, parent_run_id)
    parent.log_metrics({key: value for key, value in summary.items() if not key.endswith(("_id", "_uri"))})
    parent.set_tags({BEST_RUN_TAG: run_id, BEST_MODEL_TAG: model_uri})
    parent.flush()
    return summary


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
) -> tuple[str, bool]:
    """The winner as an MLflow model on its own run: its URI (models:/NAME/VERSION when
    registered), and whether this call made the registered version. A resumed study whose
    winner and its checkpoint did not change logs nothing new."""
    tags = client.get_run(run_id).data.tags
    logged = tags.get(MODEL_URI_TAG)
    if (
        logged
        and tags.get(CHECKPOINT_TAG) == checkpoint_sha256
        and (registered_model is None or logged.startswith(f"models:/{registered_model}/"))
    ):
        return logged, False
    info = log_keras_model(
        client.tracking_uri, run_id, model, images, registered_model, {CHECKPOINT_TAG: checkpoint_sha256}
    )
    uri, registered_here = info.model_uri, False
    if registered_model and info.registered_model_version is not None:
        version = int(info.registered_model_version)
        first = first_version_of(client, registered_model, run_id, checkpoint_sha256)
        if first < version:  # another driver of this study registered this winner a moment ago
            client.delete_model_version(registered_model, str(version))
            client.delete_logged_model(info.model_id)
            log.info("the winner is version %d of %s, registered by another driver", first, registered_model)
        uri, registered_here = f"models:/{registered_model}/{first}", first == version
    RunTracker(client, run_id).set_tags({MODEL_URI_TAG: uri, CHECKPOINT_TAG: checkpoint_sha256})
    return uri, registered_here


def first_version_of(client: MlflowClient, registered_model: str, run_id: str, checkpoint_sha256: str) -> int:
    """Drivers that share a study see it done at the same moment and each evaluate and
    register its winner. The registry keeps the first version made from the winner's run and
    checkpoint; a driver whose version came later deletes its own, so every driver ends up
    naming the same one, whatever the order of their writes."""
    same_model = f"run_id = '{run_id}' and tags.{CHECKPOINT_TAG} = '{checkpoint_sha256}'"
    versions = client.search_model_versions(f"name = '{registered_model}' and {same_model}")
    return min(int(version.version) for version in versions)


def describe_version(client: MlflowClient, model_uri: str, best, test_accuracy: float, study: str) -> None:
    """What the registered version is: which study and trial, and how well it did."""
    name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
    tags = {
        "study": study,
        "trial": best.number,
        METRIC: f"{best.value:.4f}",
        "test_accuracy": f"{test_accuracy:.4f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(
        name,
        version,
        description=(
            f"Winner of study {study}: trial {best.number}, {METRIC} {best.value:.4f}, "
            f"test_accuracy {test_accuracy:.4f}. Inputs: float32 images scaled to [0, 1]; "
            "outputs: one logit per class."
        ),
    )
