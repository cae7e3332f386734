"""A user's own model and data, as a user runs them: a builder in a module of their own folder,
colour images in 3 classes (an .npz and a folder of class subfolders), through `study.train`,
a study with two workers, `study.reproduce` and both backends; bad builders and bad data are
refused with one line before anything is written; early stopping ends a run FINISHED."""

from __future__ import annotations

import subprocess
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.helpers import run_command

MODELS = """
import keras
from keras import layers


def small_cnn(cfg, input_shape, num_classes):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(cfg.width, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(num_classes),
        ]
    )


def a_string(cfg, input_shape, num_classes):
    return "not a model"


def two_outputs(cfg, input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), layers.Flatten(), layers.Dense(2)])


NOT_CALLABLE = 3
"""
MODEL_YAML = "name: small_cnn\nbuilder: my_models:small_cnn\nwidth: 8\n"
SPACE_YAML = "model.width: {type: int, low: 4, high: 16}\n"
CLASSES = ("red", "green", "blue")


def colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count).astype("uint8")
    images = rng.integers(0, 100, (count, 16, 16, 3))
    for image, label in zip(images, labels, strict=True):
        image[..., label] += 80
    return images.astype("uint8"), labels


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's folder: my_models.py beside conf/, and their data."""
    (tmp_path / "my_models.py").write_text(MODELS)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "small_cnn.yaml").write_text(MODEL_YAML)
    (tmp_path / "conf" / "search_space").mkdir()
    (tmp_path / "conf" / "search_space" / "width.yaml").write_text(SPACE_YAML)
    (x_train, y_train), (x_test, y_test) = colour_images(240, 0), colour_images(60, 1)
    np.savez(tmp_path / "rgb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "folder" / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    return tmp_path


BASE = (
    "--config-dir",
    "conf",
    "model=small_cnn",
    "data.path=rgb.npz",
    "data.name=rgb",
    "data.validation_size=40",
)
QUIET = ("trainer.epochs=2", "mlflow.system_metrics_interval=null")


def run(project: Path, module: str, *args: str, backend: str | None = None) -> subprocess.CompletedProcess:
    return run_command(module, *args, cwd=project, env={"KERAS_BACKEND": backend} if backend else None)


def client(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'runs' / 'mlflow.db'}")


def only_run(project: Path):
    (found,) = client(project).search_runs([client(project).get_experiment_by_name("study").experiment_id])
    return found


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.slow)])
def test_a_users_builder_trains_on_colour_images_and_replays_exactly(project, backend):
    done = run(project, "train", *BASE, *QUIET, backend=backend)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = only_run(project)
    assert trained.info.status == "FINISHED"
    assert (
        trained.data.params["model.builder"] == "my_models:small_cnn"
        and trained.data.params["model.width"] == "8"
    )
    assert trained.data.tags["data.name"] == "rgb" and trained.data.tags["data.num_classes"] == "3"
    assert trained.data.tags["keras.backend"] == backend
    assert trained.data.tags["model.source_digest"].startswith("sha256:")
    replayed = run(project, "reproduce", trained.info.run_id, backend=backend)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert "reproduced: largest difference 0," in replayed.stdout
    with open(project / "my_models.py", "a") as module:  # changed: it now leaves a mark when imported
        module.write('open("imported", "w").close()\n')
    refused = run(project, "reproduce", trained.info.run_id, backend=backend)
    assert refused.returncode == 2 and "the model's module changed" in refused.stderr.splitlines()[-1]
    assert not (project / "imported").exists()  # refused before any of the module's code ran


def test_a_folder_of_class_subfolders_is_data(project):
    done = run(project, "train", *BASE, "data.path=folder", "data.name=colours", *QUIET)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = only_run(project)
    assert trained.data.tags["data.num_classes"] == "3"
    assert trained.data.tags["data.source"] == str((project / "folder").resolve())


@pytest.mark.slow  # README's own-model study runs in the default suite (tests/e2e/test_readme.py)
def test_a_study_of_a_users_model_runs_its_workers_on_it(project):
    overrides = ["search_space=width", "study.n_trials=4", "study.n_workers=2", "pruner=none", *QUIET]
    done = run(project, "sweep", *BASE, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(project / "runs" / "studies" / "default" / "leaderboard.csv")
    assert len(table) == 4 and set(table["state"]) == {"COMPLETE"}
    assert table["model.width"].between(4, 16).all()


BUILDER = "model.builder: my_models:"
REFUSED = [
    ("train", "model.builder=my_models:a_string", f"{BUILDER}a_string returned str; expected a keras.Model"),
    ("train", "model.builder=my_models:two_outputs", f"{BUILDER}two_outputs returned a model with outputs"),
    ("train", "model.builder=my_models:NOT_CALLABLE", f"{BUILDER}NOT_CALLABLE: expected a function"),
    ("train", "model.builder=my_models:missing", f"{BUILDER}missing: my_models has no 'missing'"),
    ("train", "model.builder=nowhere:f", "model.builder: no module 'nowhere' importable from"),
    ("train", "model.builder=no colon", "model.builder: expected 'module:function'"),
    (
        "train",
        "data.num_classes=2",
        "data.path: rgb.npz: y_train: expected class labels 0..1 (data.num_classes)",
    ),
    # The driver builds the model once before the study: a bad one writes no store either.
    ("sweep", "model.builder=my_models:a_string", f"{BUILDER}a_string returned str; expected a keras.Model"),
    ("sweep", "model.builder=my_models:missing", f"{BUILDER}missing: my_models has no 'missing'"),
]


@pytest.mark.parametrize(("command", "override", "expected"), REFUSED)
def test_bad_builders_and_data_are_refused_in_one_line_before_anything_is_written(
    project, command, override, expected
):
    done = run(project, command, *BASE, override)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"study.{command}: error: {expected}"), lines[-3:]
    assert "Traceback" not in done.stderr
    assert not (project / "runs" / "mlflow.db").exists() and not (project / "runs" / "optuna.db").exists()


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (
            np.zeros((40, 16, 16, 3, 2), "uint8"),
            "x_train: train images (40, 16, 16, 3, 2) and labels (40,) do not match",
        ),
        (np.zeros((40, 256), "uint8"), "x_train: train images (40, 256) and labels (40,) do not match"),
    ],
)
def test_bad_data_shapes_are_refused_in_one_line(project, images, expected):
    np.savez(
        project / "bad.npz",
        x_train=images,
        y_train=np.arange(40) % 3,
        x_test=images,
        y_test=np.arange(40) % 3,
    )
    done = run(project, "train", *BASE, "data.path=bad.npz")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        expected + "; expected (N, height, width) or (N, height, width, channels) and (N,)"
    ), done.stderr[-2000:]
    assert not (project / "runs" / "mlflow.db").exists()


def test_early_stopping_ends_finished_with_a_test_accuracy_and_a_model(project):
    # A learning rate this small barely moves val_accuracy: patience 1 stops the run early.
    overrides = ["trainer.epochs=20", "trainer.early_stopping.patience=1", "optimizer.learning_rate=1e-6"]
    done = run(project, "train", *BASE, *overrides, "mlflow.system_metrics_interval=null")
    assert done.returncode == 0, done.stderr[-3000:]
    trained = only_run(project)
    assert trained.info.status == "FINISHED"
    stopped = trained.data.metrics["stopped_epoch"]
    assert 2 <= stopped < 20 and "test_accuracy" in trained.data.metrics
    epochs = client(project).get_metric_history(trained.info.run_id, "val_accuracy")
    assert max(point.step for point in epochs) == stopped
    checkpoint = client(project).download_artifacts(
        trained.info.run_id, "checkpoints/best.keras", str(project)
    )
    assert isinstance(keras.saving.load_model(checkpoint), keras.Model)
    (logged,) = client(project).search_logged_models([trained.info.experiment_id])
    assert logged.source_run_id == trained.info.run_id
