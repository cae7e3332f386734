"""A Keras model packaged as the MLflow model that serves raw images (`study.tracking.serving`):
its checkpoint, the facts its preprocessing needs, a signature and an input example of raw
images. `mlflow.pyfunc.load_model` and `mlflow models serve` take it, on either Keras backend.
"""

from __future__ import annotations

import json
import math
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from mlflow.types.schema import Array

from study.core.names import DATA_SOURCE_TAG, DIGITS_PIXEL_FACTOR, DIGITS_SOURCE
from study.tracking import serving

MODEL_NAME = "model"  # the logged model's name inside its run
INPUT_EXAMPLE_SIZE = 5
# Data sets whose raw pixels are not 0..255: served, the model takes them as their source has them.
PIXEL_FACTORS = {DIGITS_SOURCE: DIGITS_PIXEL_FACTOR}


def preprocessing_facts(model, images: np.ndarray, data_source: str | None) -> dict:
    """What the served model needs to turn raw images into what `model` trained on: the image
    shape, the raw pixel scale, and whether the model ends in logits (every model here does:
    study.training.models, trained with from_logits=True)."""
    factor = PIXEL_FACTORS.get(data_source or "", 1)
    return {
        "image_shape": [int(size) for size in images.shape[1:]],
        "num_classes": int(model.output_shape[-1]),
        "pixel_max": math.ceil(serving.MAX_PIXEL / factor),
        "pixel_factor": factor,
        "outputs": "logits",
        "data_source": data_source,
    }


def raw_images(images: np.ndarray, facts: Mapping) -> np.ndarray:
    """The data set's raw uint8 images back from the [0, 1] floats a run trains on."""
    pixels = np.rint(np.asarray(images, dtype=np.float64) * serving.MAX_PIXEL / facts["pixel_factor"])
    return pixels.clip(0, facts["pixel_max"]).astype(np.uint8)


def serving_signature() -> ModelSignature:
    """A batch of anything in, a class and probabilities per image out. The input's tensor spec
    is MLflow's "any array" (object, (-1,)): MLflow enforces a tensor spec's exact dtype and
    rank before the model sees a request, which would refuse images without the channel axis,
    a single image or float pixels, and would answer with the request's data in the message.
    The model checks its input itself (serving.scaled_batch); the input example and the
    model's metadata say what it takes."""
    inputs = Schema([TensorSpec(np.dtype(object), (-1,))])
    outputs = Schema(
        [
            ColSpec(DataType.long, serving.CLASS_COLUMN),
            ColSpec(Array(DataType.double), serving.PROBABILITIES_COLUMN),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_served_model(
    tracking_uri: str,
    run_id: str,
    model,
    images: np.ndarray,
    requirements: list[str],
    model_tags: Mapping[str, str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log `model` on the run as the served model: raw images in (the run's data set decides
    their scale), class and probabilities out. `images` are the run's [0, 1] test images."""
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    facts = preprocessing_facts(model, images, run.data.tags.get(DATA_SOURCE_TAG))
    # MLflow's model logging reads the global URI and, for the model's own record and its
    # artifacts, the active experiment: the run's, not "Default" with ./mlruns in the cwd.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    with tempfile.TemporaryDirectory(prefix="study-model-") as scratch:
        checkpoint, facts_file = Path(scratch) / "best.keras", Path(scratch) / "preprocessing.json"
        model.save(checkpoint)
        facts_file.write_text(json.dumps(facts, indent=2))
        return mlflow.models.Model.log(
            artifact_path=None,  # deprecated for `name`, yet still a required argument
            name=MODEL_NAME,
            flavor=pyfunc_flavor(),
            python_model=serving.__file__,  # copied into the model: it serves without this package
            artifacts={serving.CHECKPOINT_ARTIFACT: str(checkpoint), serving.FACTS_ARTIFACT: str(facts_file)},
            run_id=run_id,
            signature=serving_signature(),
            input_example=raw_images(images[:INPUT_EXAMPLE_SIZE], facts),
            metadata={"input": serving.expected_input(facts), **facts},
            pip_requirements=requirements,
            # On the logged model from its first (PENDING) moment: a rerun tells a model that a
            # killed process left PENDING, or logged READY and never registered, by these tags.
            tags=dict(model_tags or {}),
            # The example is not replayed through a scoring server at logging time (seconds):
            # the tests serve the registered model and send it requests.
            validate_serving_input=False,
        )


def pyfunc_flavor() -> types.SimpleNamespace:
    """mlflow.pyfunc, whose save_model refuses the validate_serving_input that Model.log reads
    from the same keyword arguments."""
    import mlflow.pyfunc

    def save_model(path: str, validate_serving_input: bool = True, **kwargs) -> None:
        mlflow.pyfunc.save_model(path=path, **kwargs)

    return types.SimpleNamespace(__name__=mlflow.pyfunc.__name__, save_model=save_model)
