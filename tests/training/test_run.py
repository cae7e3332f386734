"""A tracked run end to end: what lands in MLflow, TensorBoard and the checkpoints; determinism;
replay; failures; bad input that must leave the store untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from study.config.checks import checked_config
from study.core.errors import ConfigError
from study.core.native_logs import NATIVE_LINE
from study.tracking.runs import RunTracker, flatten
from study.tracking.serving import softmax
from study.training.callbacks import NonFiniteLossError
from study.training.data import load_dataset
from study.training.data_files import IDX_FILES
from study.training.run import compile_model, train
from tests.helpers import client_for, compose_config, history

PER_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def only_run(cfg):
    client = client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_idx_dir):
    """One real run of the tiny CNN for 2 epochs; the tests below read what it left behind."""
    root = tmp_path_factory.mktemp("tracked")
    cfg = compose_config(
        "train",
        [
            f"runs_dir={root / 'runs'}",
            f"data.path={tiny_idx_dir}",
            "data.validation_size=100",
            "trainer.epochs=2",
            "trainer.batch_size=32",
            "trainer.verbose=0",
            "model.filters1=4",
            "model.filters2=8",
            "model.dense_units=16",
        ],
    )
    metrics = train(cfg, output_dir=root / "out")
    client, run = only_run(cfg)
    downloads = root / "downloads"
    downloads.mkdir()
    local = Path(client.download_artifacts(run.info.run_id, "", str(downloads)))
    return cfg, metrics, client, run, local


def test_run_is_finished_with_the_whole_config_as_params(tracked_run):
    cfg, _, _, run, _ = tracked_run
    assert run.info.status == "FINISHED"
    expected = {key: str(value) for key, value in flatten(checked_config(cfg)).items()}
    assert run.data.params == expected
    assert run.data.params["model.dropout_rate"] == "0.5"
    assert run.data.params["optimizer.name"] == "adam"


def test_per_epoch_histories_and_final_metrics(tracked_run):
    _, metrics, client, run, _ = tracked_run
    for key in PER_EPOCH:
        steps = [step for step, _ in history(client, run.info.run_id, key)]
        assert steps == [1, 2], key
    val_accuracy = [value for _, value in history(client, run.info.run_id, "val_accuracy")]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(max(val_accuracy))
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["test_loss"] >= 0.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert all(value > 0 for _, value in history(client, run.info.run_id, "images_per_second"))


def test_tags_say_what_ran_where(tracked_run, tiny_idx_dir):
    cfg, _, _, run, _ = tracked_run
    tags = run.data.tags
    data = load_dataset(checked_config(cfg).data, seed=cfg.trainer.seed)
    assert tags["data.digest"] == data.digest
    assert tags["data.name"] == "mnist"
    assert tags["data.source"] == str(tiny_idx_dir.resolve())
    assert tags["keras.backend"] == keras.backend.backend()
    assert tags["device"].startswith(("CPU", "GPU"))
    assert tags["versions.keras"] == keras.__version__
    assert {"versions.mlflow", "versions.optuna", "versions.hydra-core", "versions.python"} <= set(tags)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if commit.returncode == 0:
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()


def test_run_is_named_and_records_its_data_set_model_and_machine(tracked_run):
    cfg, _, client, run, local = tracked_run
    assert run.info.run_name == "cnn-adam-mnist"  # mlflow.run_name is null: what the run is
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist"
    assert run.data.tags["data.digest"].removeprefix("sha256:").startswith(dataset_input.dataset.digest)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    # The best checkpoint as an MLflow model: loads through pyfunc, takes the raw uint8 images
    # and answers with the classes and probabilities of what Keras predicts.
    (logged,) = run.outputs.model_outputs
    record = client.get_logged_model(logged.model_id)
    assert record.experiment_id == run.info.experiment_id and record.source_run_id == run.info.run_id
    assert str(Path(checked_config(cfg).runs_dir).resolve()) in record.artifact_location  # under runs/
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    data = load_dataset(checked_config(cfg).data, seed=cfg.trainer.seed)
    best = keras.saving.load_model(local / "checkpoints" / "best.keras")
    expected = softmax(best.predict(data.x_test[:8], verbose=0).astype("float64"))
    raw = np.rint(data.x_test[:8, ..., 0] * 255).astype("uint8")  # as the IDX files hold them
    answer = model.predict(raw)
    assert np.array(answer["probabilities"].tolist()) == pytest.approx(expected, abs=1e-5)
    assert answer["class"].tolist() == expected.argmax(axis=1).tolist()
    assert (
        model.metadata.metadata["input"]
        == "images (N, 12, 12, 1) or (N, 12, 12), uint8 or float pixel values 0..255"
    )


def test_tensorboard_events_parse_with_tensorboards_reader(tracked_run):
    _, _, client, run, local = tracked_run
    events = EventAccumulator(str(local / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss/train", "loss/validation", "accuracy/train", "accuracy/validation"} <= set(scalars)
    logged = [value for _, value in history(client, run.info.run_id, "val_accuracy")]
    written = [event.value for event in events.Scalars("accuracy/validation")]
    assert [event.step for event in events.Scalars("accuracy/validation")] == [1, 2]
    assert written == pytest.approx(logged)


def test_best_checkpoint_evaluates_to_the_logged_validation_accuracy(tracked_run):
    cfg, _, _, run, local = tracked_run
    data = load_dataset(checked_config(cfg).data, seed=cfg.trainer.seed)
    best = keras.saving.load_model(local / "checkpoints" / "best.keras")
    last = keras.saving.load_model(local / "checkpoints" / "last.keras")
    _, best_accuracy = best.evaluate(
        data.x_val, data.y_val, batch_size=cfg.trainer.eval_batch_size, verbose=0
    )
    assert best_accuracy == pytest.approx(run.data.metrics["best_val_accuracy"], abs=1e-6)
    _, test_accuracy = last.evaluate(
        data.x_test, data.y_test, batch_size=cfg.trainer.eval_batch_size, verbose=0
    )
    assert test_accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)


def test_same_config_twice_gives_identical_metrics(tracked_run, tmp_path, tiny_idx_dir):
    cfg, first_metrics, first_client, first_run, _ = tracked_run
    again = cfg.copy()
    again.runs_dir = str(tmp_path / "again")
    second_metrics = train(again)
    second_client, second_run = only_run(again)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        first = history(first_client, first_run.info.run_id, key)
        second = history(second_client, second_run.info.run_id, key)
        assert first == second, key
    assert first_metrics["test_accuracy"] == second_metrics["test_accuracy"]


def test_logged_config_replays_the_run(tracked_run, tmp_path):
    """The documented replay: python -m study.train --config-path <dir> --config-name config."""
    cfg, metrics, _, original, local = tracked_run
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    text = (local / "config.yaml").read_text()
    original_runs_dir = checked_config(cfg).runs_dir
    (replay_dir / "config.yaml").write_text(text.replace(original_runs_dir, str(tmp_path / "runs")))
    done = subprocess.run(
        [sys.executable, "-m", "study.train", "--config-path", str(replay_dir), "--config-name", "config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The backend starts quietly: no native start-up lines ("Could not find cuda drivers", ...).
    output = done.stdout + done.stderr
    assert not [line for line in output.splitlines() if NATIVE_LINE.match(line) or "absl::" in line], output
    replayed = compose_config("config", [], config_dir=replay_dir)
    _, run = only_run(replayed)
    assert run.info.status == "FINISHED"
    assert run.data.tags["replay_of"] == original.info.run_id  # a replay links to the run it replays
    assert run.info.run_name == "cnn-adam-mnist-replay"
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["best_val_accuracy"] == metrics["best_val_accuracy"]
    assert (tmp_path / "runs" / "hydra" / "train").is_dir()  # Hydra's output stayed under runs/


def test_step_budget_stops_mid_epoch(make_config):
    cfg = make_config("trainer.max_steps=12", "trainer.epochs=1", model="softmax")
    metrics = train(cfg)
    # 300 training examples in batches of 32: 10 steps an epoch, so 12 steps take 2 epochs.
    assert metrics["epochs"] == 2
    client, run = only_run(cfg)
    best = keras.saving.load_model(Path(client.download_artifacts(run.info.run_id, "checkpoints/last.keras")))
    assert int(keras.ops.convert_to_numpy(best.optimizer.iterations)) == 12


def test_diverging_run_ends_failed_with_the_reason(make_config):
    cfg = make_config("optimizer=sgd", "optimizer.learning_rate=1e30", model="mlp")
    with pytest.raises(NonFiniteLossError, match="train_loss is nan after epoch 1"):
        train(cfg)
    client, run = only_run(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLossError: train_loss is nan")
    assert [step for step, _ in history(client, run.info.run_id, "train_loss")] == [1]


def test_interrupted_run_ends_killed(make_config):
    cfg = make_config(model="softmax")

    def interrupt(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=interrupt)
    client, run = only_run(cfg)
    assert run.info.status == "KILLED"
    assert [step for step, _ in history(client, run.info.run_id, "val_accuracy")] == [1]


def test_mixed_precision_trains_and_saves_a_loadable_model(make_config):
    cfg = make_config("trainer.precision=mixed_bfloat16", "trainer.epochs=1")
    metrics = train(cfg)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert keras.config.dtype_policy().name == "float32"  # the policy was the run's alone
    client, run = only_run(cfg)
    folder = Path(client.download_artifacts(run.info.run_id, "checkpoints"))
    model = keras.saving.load_model(folder / "best.keras")
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    # The logits stay float32, so the cross-entropy is computed at full precision.
    assert model.get_layer("logits").compute_dtype == "float32"


def test_mixed_float16_scales_the_loss(make_config):
    cfg = checked_config(make_config("trainer.precision=mixed_float16"))
    model = compile_model(cfg, load_dataset(cfg.data, cfg.trainer.seed))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras wraps it
    assert keras.config.dtype_policy().name == "float32"


def traces_of_one_epoch(model: keras.Model, dataset) -> int:
    """How often Keras traced the model's train step (its Python code runs once per trace)."""
    traced = []
    train_step = model.train_step
    model.train_step = lambda data: traced.append(1) or train_step(data)
    model.fit(dataset.x_train[:64], dataset.y_train[:64], batch_size=32, epochs=1, verbose=0)
    return len(traced)


def test_the_train_step_is_traced_once_for_a_new_and_for_a_resumed_model(make_config, tmp_path):
    """The accuracy metric and the optimizer's slots exist before the first step is traced: a
    variable made while tracing makes TensorFlow trace the step again (half a second of every
    CNN segment on a CPU). A checkpoint keeps both, so a resumed segment traces once too."""
    cfg = checked_config(make_config("optimizer=adam"))
    dataset = load_dataset(cfg.data, cfg.trainer.seed)
    model = compile_model(cfg, dataset)
    assert traces_of_one_epoch(model, dataset) == 1
    model.save(tmp_path / "last.keras")
    keras.backend.clear_session()
    assert traces_of_one_epoch(keras.saving.load_model(tmp_path / "last.keras"), dataset) == 1


ASYNC_CHECK = """
import keras
from study.training.callbacks import BestCheckpoint, EpochMetrics
callbacks = [EpochMetrics(100, 10, sinks=[]), BestCheckpoint("best.keras")]
print(keras.callbacks.CallbackList(callbacks)._async_train)
"""


def test_run_callbacks_let_keras_dispatch_train_batches_asynchronously(tmp_path):
    """Where Keras may call batch hooks from a thread (JAX; TensorFlow never does), one hook it
    must call in line makes every train step wait for the last; a run's callbacks have none."""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", ASYNC_CHECK], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.stdout.strip() == "True", done.stderr[-2000:]


def test_a_metric_batch_the_store_rejects_fails_the_run(make_config):
    cfg = checked_config(make_config())
    tracker = RunTracker.start(cfg.mlflow)
    tracker.log_metrics({"val_accuracy": 0.5}, step=1)
    tracker.log_metrics({"../escape": 1.0}, step=1)  # MLflow refuses path-like names
    with pytest.raises(MlflowException), tracker:
        pass
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert "../escape" in run.data.tags["error"]
    assert run.data.metrics == {"val_accuracy": 0.5}  # the batch before it was stored


@pytest.mark.parametrize(
    ("overrides", "damage", "expected"),
    [
        (["optimizer.learning_rate=-1"], None, "optimizer.learning_rate: expected a finite number > 0"),
        (["model.dropout_rate=1.5"], None, "model.dropout_rate: expected a number in [0, 1)"),
        (
            ["trainer.precision=float16"],
            None,
            "trainer.precision: expected float32 or mixed_float16 or mixed_bfloat16",
        ),
        ([], "missing", "has no t10k-images-idx3-ubyte.gz"),
        ([], "corrupt", "t10k-images-idx3-ubyte.gz: cannot be read or decompressed"),
    ],
)
def test_bad_input_fails_before_any_run(make_config, tiny_idx_dir, tmp_path, overrides, damage, expected):
    extra = []
    if damage:
        folder = tmp_path / "data"
        folder.mkdir()
        for file in tiny_idx_dir.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        target = folder / f"{IDX_FILES['x_test']}.gz"
        target.unlink() if damage == "missing" else target.write_bytes(b"\x1f\x8b broken")
        extra = [f"data.path={folder}"]
    cfg = make_config(*overrides, *extra)
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    assert expected in str(caught.value)
    assert not (tmp_path / "runs").exists()  # no MLflow store was even created


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", "study.train", *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.dropuot_rate=0.3",
            "study.train: error: model.dropuot_rate: Key 'dropuot_rate' not in 'CnnConfig'",
        ),
        ("optimizer.learning_rate=0", "study.train: error: optimizer.learning_rate: expected a finite"),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, tiny_idx_dir, override, expected):
    done = run_cli(f"runs_dir={tmp_path / 'runs'}", f"data.path={tiny_idx_dir}", override, cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("study.train")]
    assert lines and lines[-1].startswith(expected), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()
