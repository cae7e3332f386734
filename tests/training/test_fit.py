"""Training in segments (the rungs of scheduler=asha): a run resumed from its last checkpoint
continues exactly where it stopped, model and optimizer state and data order included."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from study.config.checks import checked_config
from study.tracking.runs import RunTracker
from study.training import backend
from study.training.run import train
from tests.helpers import client_for, history


def last_checkpoint(cfg, run_id: str, folder: Path) -> keras.Model:
    folder.mkdir()
    local = client_for(cfg).download_artifacts(run_id, "checkpoints/last.keras", str(folder))
    return keras.saving.load_model(local)


def up_to(cfg, stop: int, unit: str = "epochs"):
    """cfg training resumably (in segments) up to `stop` epochs or optimizer steps: a segment
    is said in the config alone, as the study's objective says it."""
    budget = cfg.copy()
    budget.trainer.resumable = True
    if unit == "steps":
        budget.trainer.max_steps = stop
    else:
        budget.trainer.epochs = stop
    return budget


def train_tagged(cfg, tag: str, *args, **kwargs) -> dict[str, float]:
    """`train` a copy of cfg whose run carries the tag segment_test=<tag> (see `run_id_of`)."""
    tagged = cfg.copy()
    tagged.mlflow.tags = {"segment_test": tag}
    return train(tagged, *args, **kwargs)


def run_id_of(cfg, tag: str) -> str:
    client = client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.segment_test = '{tag}'")
    return run.info.run_id


@pytest.mark.parametrize(
    ("unit", "straight", "pieces"),
    [
        # 300 training examples in batches of 32: 10 steps an epoch.
        pytest.param("epochs", 3, [1, 3], marks=pytest.mark.slow),
        ("steps", 23, [4, 23]),
    ],
)
def test_resumed_segments_equal_training_straight_through(make_config, tmp_path, unit, straight, pieces):
    # The CNN with dropout and Adam: its moments and the dropout generator's state must be resumed.
    cfg = make_config("optimizer=adam", "optimizer.learning_rate=0.01", "model.dropout_rate=0.5")
    straight_metrics = train_tagged(up_to(cfg, straight, unit), "whole")

    steps_seen: list[int] = []
    train_tagged(up_to(cfg, pieces[0], unit), "parts", lambda step, metrics: steps_seen.append(step))
    run_id = run_id_of(cfg, "parts")
    with RunTracker.resume(checked_config(cfg).mlflow, run_id) as tracker:
        resumed_metrics = train(
            up_to(cfg, pieces[1], unit),
            lambda step, metrics: steps_seen.append(step),
            tracker=tracker,
            resume=True,
        )

    client = client_for(cfg)
    whole_id = run_id_of(cfg, "whole")
    expected_steps = [1, 2, 3] if unit == "epochs" else [4, 10, 20, 23]
    assert steps_seen == expected_steps  # epoch ends and the segment boundaries
    assert [step for step, _ in history(client, run_id, "val_accuracy")] == expected_steps
    for key in ("val_loss", "val_accuracy", "train_loss"):
        whole_curve = dict(history(client, whole_id, key))
        parts_curve = dict(history(client, run_id, key))
        # Every point both runs logged is identical: same weights, same optimizer, same data.
        # (A training metric averages over the stretch since the last point: the last one only.)
        shared = sorted(set(whole_curve) & set(parts_curve))[-1 if key == "train_loss" else 0 :]
        assert shared and shared[-1] == expected_steps[-1], key
        assert [parts_curve[s] for s in shared] == [whole_curve[s] for s in shared], key
    assert resumed_metrics["best_val_accuracy"] == straight_metrics["best_val_accuracy"]
    assert client.get_run(run_id).info.status == "FINISHED"
    best = max(value for _, value in history(client, run_id, "val_accuracy"))
    assert client.get_run(run_id).data.metrics["best_val_accuracy"] == best

    whole_model = last_checkpoint(cfg, whole_id, tmp_path / "whole")
    parts_model = last_checkpoint(cfg, run_id, tmp_path / "parts")
    total_steps = 30 if unit == "epochs" else 23
    assert int(keras.ops.convert_to_numpy(parts_model.optimizer.iterations)) == total_steps
    for left, right in zip(whole_model.get_weights(), parts_model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)
    for left, right in zip(
        whole_model.optimizer.variables, parts_model.optimizer.variables, strict=True
    ):  # Adam's moments and step count
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(left), keras.ops.convert_to_numpy(right))


def test_a_segment_already_trained_by_a_dead_attempt_is_not_trained_again(make_config):
    """A worker died after saving the segment's checkpoint but before its trial ended: the retry
    finds the checkpoint at the segment's end and reports the run's curve without training."""
    cfg = make_config(model="softmax")
    first = train(up_to(cfg, 2))
    client = client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    seen: list[int] = []
    with RunTracker.resume(checked_config(cfg).mlflow, run.info.run_id) as tracker:
        again = train(up_to(cfg, 2), lambda step, metrics: seen.append(step), tracker=tracker, resume=True)
    assert seen == []
    assert again["best_val_accuracy"] == first["best_val_accuracy"]
    assert [step for step, _ in history(client, run.info.run_id, "val_accuracy")] == [1, 2]


def test_segments_feed_fit_the_examples_in_the_order_given_without_autotuning():
    """Under TensorFlow a segment's `fit` reads a tf.data pipeline with autotuning off (Keras'
    pipeline for NumPy arrays kept `fit` waiting for its autotuning thread, up to a minute):
    the same batches, in the order given."""
    x = np.arange(14, dtype="float32").reshape(7, 2)
    y = np.arange(7)
    inputs = backend.in_order_batches(x, y, batch_size=3)
    assert inputs["shuffle"] is False
    if keras.backend.backend() != "tensorflow":
        assert inputs["x"] is x and inputs["y"] is y and inputs["batch_size"] == 3
        return
    pipeline = inputs["x"]
    assert pipeline.options().autotune.enabled is False
    batches = list(pipeline.as_numpy_iterator())
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert np.array_equal(np.concatenate([images for images, _ in batches]), x)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="other backends: Keras shuffles")
def test_a_run_trained_in_one_fit_equals_the_same_run_trained_in_segments(make_config, tmp_path):
    """The plain path (one `fit` for the whole run, as `scheduler=none` trains) reads each
    epoch in the order a run trained in segments reads it, with the same dropout masks: the
    same numbers, and no wait for an autotuning thread when `fit` returns."""
    cfg = make_config("optimizer=adam", "optimizer.learning_rate=0.01", "model.dropout_rate=0.5")
    in_one_fit = train_tagged(cfg, "one-fit", evaluate_test=False)
    in_segments = train_tagged(up_to(cfg, cfg.trainer.epochs), "per-epoch", evaluate_test=False)

    client = client_for(cfg)
    one_fit_id, per_epoch_id = run_id_of(cfg, "one-fit"), run_id_of(cfg, "per-epoch")
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert history(client, one_fit_id, key) == history(client, per_epoch_id, key), key
    assert in_one_fit["best_val_accuracy"] == in_segments["best_val_accuracy"]
    one_fit_model = last_checkpoint(cfg, one_fit_id, tmp_path / "one-fit")
    per_epoch_model = last_checkpoint(cfg, per_epoch_id, tmp_path / "per-epoch")
    for left, right in zip(one_fit_model.get_weights(), per_epoch_model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_one_fit_of_several_epochs_reads_each_epoch_in_its_own_order_without_autotuning():
    x = np.arange(14, dtype="float32").reshape(7, 2)
    y = np.arange(7)
    orders = np.array([[6, 5, 4, 3, 2, 1, 0], [0, 2, 4, 6, 1, 3, 5]])
    inputs = backend.batches_in_orders(x, y, 3, orders)
    if keras.backend.backend() != "tensorflow":
        assert inputs is None
        return
    assert inputs["steps_per_epoch"] == 3 and inputs["shuffle"] is False
    pipeline = inputs["x"]
    assert pipeline.options().autotune.enabled is False
    batches = list(pipeline.as_numpy_iterator())
    labels = [batch_labels.tolist() for _, batch_labels in batches]
    assert labels == [[6, 5, 4], [3, 2, 1], [0], [0, 2, 4], [6, 1, 3], [5]]
    for images, batch_labels in batches:
        np.testing.assert_array_equal(images, x[batch_labels])


def test_early_stopping_carries_across_segments_as_in_one_fit(make_config):
    """A run trained in segments stops at the epoch it stops at straight through: the patience
    is picked up from the curve the earlier segments logged, and a segment after the stop
    trains nothing."""
    cfg = make_config(
        "optimizer=sgd", "optimizer.learning_rate=1e-5", "trainer.early_stopping.patience=1", model="softmax"
    )
    straight = train_tagged(up_to(cfg, 8), "whole-es")
    assert 2 <= straight["stopped_epoch"] < 8
    train_tagged(up_to(cfg, 1), "parts-es")
    run_id = run_id_of(cfg, "parts-es")
    for stop in (4, 8):
        with RunTracker.resume(checked_config(cfg).mlflow, run_id) as tracker:
            train(up_to(cfg, stop), tracker=tracker, resume=True)
    client = client_for(cfg)
    parts_curve = history(client, run_id, "val_accuracy")
    assert parts_curve == history(client, run_id_of(cfg, "whole-es"), "val_accuracy")
    assert parts_curve[-1][0] == straight["stopped_epoch"]
