"""The served model: raw images in, the predicted class and the class probabilities out.

MLflow runs this file as the code of the logged model (a model from code): it is copied into
the model beside its Keras checkpoint and a JSON of the facts that preprocessing needs, and it
runs wherever MLflow and Keras are installed, without this package. So it imports nothing from
`study`, and Keras (with its backend, either one: a .keras file is backend-independent) only
when the model loads.

Input: images as the data set holds them, integer (uint8) or float pixel values on its raw
scale (0..255; scikit-learn's digits 0..16), shaped (N, H, W, C), or (N, H, W) when there is
one channel, or one image alone. Output: one row per image, its `class` (the most probable)
and its `probabilities` (one per class, summing to 1). Anything else is refused with one line
that names the shape and the values expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"  # the model's best.keras
FACTS_ARTIFACT = "preprocessing"  # the JSON that `preprocessing_facts` writes
CLASS_COLUMN = "class"
PROBABILITIES_COLUMN = "probabilities"
MAX_PIXEL = 255  # what the training pipeline divides by (study.training.data)
BATCH_SIZE = 256


class InputError(MlflowException):
    """Input that is not images of the model's shape and scale: one line, HTTP 400.

    MLflow's scoring server puts the whole request in front of the message of an error raised
    while predicting ("Failed to predict data '<the array>'"): thousands of numbers. The
    message stays the one line that says what was expected."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):  # set once, by __init__
            self._line = value


class ImageClassifier(PythonModel):
    """The Keras checkpoint with the data set's preprocessing in front and a softmax behind."""

    def load_context(self, context) -> None:
        import keras  # here: the server imports this file before it picks anything else

        self.facts = json.loads(Path(context.artifacts[FACTS_ARTIFACT]).read_text())
        self.model = keras.saving.load_model(context.artifacts[CHECKPOINT_ARTIFACT], compile=False)

    # An ndarray hint is one MLflow neither infers a signature from nor enforces (a single image,
    # float pixels are welcome too); without a hint it warns at every import of this file.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        return classify(self.model, model_input, self.facts)


def classify(model, model_input, facts: dict) -> pd.DataFrame:
    """Each image's class and probabilities, from raw images (see the module docstring)."""
    images = scaled_batch(model_input, facts)
    if len(images):
        outputs = np.asarray(model.predict(images, batch_size=BATCH_SIZE, verbose=0), dtype=np.float64)
    else:
        outputs = np.zeros((0, facts["num_classes"]))
    probabilities = softmax(outputs) if facts["outputs"] == "logits" else outputs
    return pd.DataFrame(
        {
            CLASS_COLUMN: probabilities.argmax(axis=1).astype(np.int64),
            PROBABILITIES_COLUMN: [row.tolist() for row in probabilities],
        }
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # no overflow for large logits
    return shifted / shifted.sum(axis=1, keepdims=True)


def expected_input(facts: dict) -> str:
    """What the model takes, in the words of every error: `images (N, 28, 28, 1) or (N, 28, 28),
    uint8 or float pixel values 0..255`."""
    shape = tuple(facts["image_shape"])
    shapes = [shape, shape[:-1]] if len(shape) > 1 and shape[-1] == 1 else [shape]
    written = " or ".join("(N, " + ", ".join(str(size) for size in each) + ")" for each in shapes)
    return f"images {written}, uint8 or float pixel values 0..{facts['pixel_max']}"


def scaled_batch(model_input, facts: dict) -> np.ndarray:
    """Raw images as the model trained on them: float32 (N, *image_shape) in [0, 1], the way
    study.training.data scales them (pixel * pixel_factor, at most 255, over 255)."""
    expected = expected_input(facts)
    images = numeric_array(model_input, expected)
    images = as_batch(images, tuple(facts["image_shape"]), expected)
    if images.size == 0:
        return images.astype(np.float32)
    if not np.isfinite(images).all():
        raise InputError(f"got NaN or infinite pixel values; expected {expected}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > facts["pixel_max"]:
        raise InputError(f"got pixel values in [{low:g}, {high:g}]; expected {expected}")
    fractional = np.issubdtype(images.dtype, np.floating) and bool((images != np.round(images)).any())
    if fractional and high <= 1.0:
        raise InputError(f"got values in [{low:g}, {high:g}], scaled already?; expected {expected}")
    scaled = np.minimum(images.astype(np.float32) * facts["pixel_factor"], MAX_PIXEL) / MAX_PIXEL
    return scaled.astype(np.float32)


def numeric_array(model_input, expected: str) -> np.ndarray:
    """The input as a numeric array: the scoring server hands over a request's JSON lists as an
    object array (the signature declares no dtype)."""
    try:
        images = np.asarray(model_input)
        if images.dtype == object:
            images = np.array(images.tolist())
    except (ValueError, TypeError):
        raise InputError(f"got images of different shapes; expected {expected}") from None
    if images.dtype.kind not in "uif":  # booleans, strings, complex numbers: no pixels
        raise InputError(f"got {images.dtype} values; expected {expected}")
    return images


def as_batch(images: np.ndarray, shape: tuple[int, ...], expected: str) -> np.ndarray:
    """(N, *shape) from a batch or a single image, with or without the channel axis when there
    is one channel."""
    one_channel = len(shape) > 1 and shape[-1] == 1
    if images.shape[1:] == shape:
        return images
    if images.shape == shape:
        return images[np.newaxis]
    if one_channel and images.shape[1:] == shape[:-1]:
        return images[..., np.newaxis]
    if one_channel and images.shape == shape[:-1]:
        return images[np.newaxis, ..., np.newaxis]
    raise InputError(f"got an array of shape {images.shape}; expected {expected}")


# MLflow loads this file under a name of its own and serves the model set here; imported as
# part of the package (to log the model, in tests) it sets nothing.
if __name__ != "study.tracking.serving":
    mlflow.models.set_model(ImageClassifier())
