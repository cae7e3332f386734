"""The logged model serves raw images: uint8 or float pixels on the data set's own scale, with
or without the channel axis, one image or many; it answers with each image's class and class
probabilities, and refuses anything else with one line. Logged for real, loaded through
`mlflow.pyfunc.load_model` (MLflow's schema enforcement included)."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from study.config.checks import checked_config
from study.core.names import DATA_SOURCE_TAG
from study.tracking.packaging import preprocessing_facts, raw_images
from study.tracking.serving import InputError, expected_input, scaled_batch, softmax
from study.training.data import load_dataset
from tests.helpers import TINY_SIZES, compose_config, synthetic_digits

DIGITS = "sklearn.datasets.load_digits"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny Keras model on 8x8 digits, logged and registered as the served model, and loaded."""
    import keras

    from study.tracking.lineage import log_keras_model

    folder = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("served", artifact_location=(folder / "artifacts").as_uri())
    run_id = client.create_run(experiment, tags={DATA_SOURCE_TAG: DIGITS}).info.run_id
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    test_images = np.random.default_rng(0).integers(0, 17, (10, 8, 8, 1)) * 16 / 255  # as data.py scales
    info = log_keras_model(uri, run_id, model, test_images.clip(0, 1).astype("float32"), "digits")
    return SimpleNamespace(
        info=info,
        model=model,
        uri=uri,
        pyfunc=mlflow.pyfunc.load_model("models:/digits/1"),
        raw=np.random.default_rng(1).integers(0, 17, (4, 8, 8)).astype("uint8"),  # scikit-learn's scale
    )


def expected_probabilities(model, raw: np.ndarray) -> np.ndarray:
    """What the model says of raw 0..16 digits as study.training.data feeds them to it."""
    scaled = np.minimum(raw.reshape(-1, 8, 8, 1).astype("float32") * 16, 255) / 255
    return softmax(np.asarray(model.predict(scaled, verbose=0), dtype=np.float64))


def test_raw_images_in_classes_and_probabilities_out(served):
    expected = expected_probabilities(served.model, served.raw)
    for images in (served.raw, served.raw[..., np.newaxis], served.raw.astype("float64")):
        answer = served.pyfunc.predict(images)
        assert list(answer.columns) == ["class", "probabilities"] and len(answer) == 4
        probabilities = np.array(answer["probabilities"].tolist())
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
        assert answer["class"].tolist() == expected.argmax(axis=1).tolist()
    for single in (served.raw[0], served.raw[0][..., np.newaxis]):  # one image, without its batch axis
        (row,) = served.pyfunc.predict(single).itertuples(index=False)
        assert row[0] == expected[0].argmax()
        np.testing.assert_allclose(row[1], expected[0], atol=1e-5)


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (np.zeros((2, 7, 7), dtype="uint8"), "got an array of shape (2, 7, 7)"),
        (np.zeros((2, 8, 8, 3), dtype="uint8"), "got an array of shape (2, 8, 8, 3)"),
        (np.full((1, 8, 8), "a"), "got <U1 values"),
        (np.ones((1, 8, 8), dtype=bool), "got bool values"),
        (np.array([[[1, 2], [3]]], dtype=object), "got images of different shapes"),
        (np.full((1, 8, 8), np.nan), "got NaN or infinite pixel values"),
        (np.full((1, 8, 8), 200, dtype="uint8"), "got pixel values in [200, 200]"),
        (np.full((1, 8, 8), -1.0), "got pixel values in [-1, -1]"),
        (np.full((1, 8, 8), 0.5), "scaled already?"),  # the [0, 1] floats the old model took
        (pd.DataFrame({"a": [1]}), "got an array of shape (1,)"),  # MLflow makes it an array
    ],
)
def test_bad_input_is_one_line_that_says_what_is_expected(served, images, problem):
    with pytest.raises(MlflowException) as raised:
        served.pyfunc.predict(images)
    message = raised.value.message
    assert "\n" not in message and len(message) < 200, message
    assert problem in message, message
    assert message.endswith("expected images (N, 8, 8, 1) or (N, 8, 8), uint8 or float pixel values 0..16")
    assert raised.value.get_http_status_code() == 400


def test_the_scoring_servers_data_dump_does_not_replace_the_line():
    """MLflow's scoring server puts the request's whole array in front of a prediction error's
    message; the model's own line stays the message the client gets."""
    error = InputError("got an array of shape (2, 7, 7); expected ...")
    error.message = f"Failed to predict data '{np.zeros((2, 7, 7))}'. \nError: {error.message}"
    assert error.message == "got an array of shape (2, 7, 7); expected ..."
    assert '"message": "got an array of shape (2, 7, 7); expected ..."' in error.serialize_as_json()


def test_signature_input_example_and_metadata_say_what_the_model_takes(served):
    signature = served.info.signature
    assert signature.inputs.inputs[0].shape == (-1,)  # a batch of anything: the model checks it
    assert signature.outputs.input_names() == ["class", "probabilities"]
    logged = mlflow.models.Model.load(served.info.model_uri)
    example = logged.load_input_example(mlflow.artifacts.download_artifacts(served.info.model_uri))
    pixels = np.array(example.tolist())  # loaded as the signature's object array
    assert (
        pixels.dtype.kind == "i" and pixels.shape == (5, 8, 8, 1) and 0 <= pixels.min() <= pixels.max() <= 16
    )
    assert logged.metadata["input"] == "images (N, 8, 8, 1) or (N, 8, 8), uint8 or float pixel values 0..16"
    assert served.pyfunc.predict(example)["class"].between(0, 2).all()


def test_preprocessing_is_the_training_pipelines_for_digits_and_for_files(tiny_idx_dir):
    """Raw images scaled for serving are exactly the arrays a run trains on: scikit-learn's
    0..16 digits (the data pipeline stretches them by 16) and 0..255 files alike."""
    model = SimpleNamespace(output_shape=(None, 10))
    for overrides, source, raw_test in (
        (["data=digits"], DIGITS, None),
        ([f"data.path={tiny_idx_dir}", "data.validation_size=100"], str(tiny_idx_dir), "synthetic"),
    ):
        cfg = checked_config(compose_config("train", overrides))
        data = load_dataset(cfg.data, cfg.trainer.seed)
        facts = preprocessing_facts(model, data.x_test, source)
        raw = raw_images(data.x_test, facts)
        np.testing.assert_array_equal(scaled_batch(raw, facts), data.x_test)
        np.testing.assert_array_equal(scaled_batch(raw[..., 0], facts), data.x_test)  # no channel axis
        if raw_test is None:  # each raw test image is one of scikit-learn's own, 0..16
            from sklearn.datasets import load_digits

            originals = {image.astype("uint8").tobytes() for image in load_digits().images}
            assert facts["pixel_max"] == 16 and all(image[..., 0].tobytes() in originals for image in raw)
        else:
            images, _ = synthetic_digits(TINY_SIZES["test"], 2)
            np.testing.assert_array_equal(raw[..., 0], images)
            assert (
                expected_input(facts)
                == "images (N, 12, 12, 1) or (N, 12, 12), uint8 or float pixel values 0..255"
            )
