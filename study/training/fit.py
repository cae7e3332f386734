"""Fitting a compiled model: in one `fit`, or in segments that resume anywhere with the same
numbers, each epoch reading the examples in an order drawn from (seed, epoch)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from study.training.replay_config import write_replay_config

if TYPE_CHECKING:
    import keras

    from study.tracking.runs import RunTracker
    from study.training.data import Dataset
    from study.training.resume import StartingPoint

EpochCallback = Callable[[int, dict[str, float]], None]


EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Segment:
    """How far a run that trains in several stretches trains now (a rung of scheduler=asha): up
    to `stop` epochs or optimizer steps (`unit`), from wherever the run's last checkpoint left
    it, or from the start for a new run. Its config says it (`trainer.resumable`, and the budget
    in `trainer.epochs` or `trainer.max_steps`), so its config.yaml replays the run that far.

    Segments see the data in a fixed order per epoch, drawn from (trainer.seed, epoch), and
    validate on the whole validation set at every epoch end and at `stop`, so training in
    segments gives the same weights and metrics as one segment over the same span. Metric steps
    are epochs, or optimizer steps with unit "steps" (a rung may end mid-epoch).
    """

    stop: int
    unit: str = "epochs"

    @classmethod
    def of(cls, trainer: DictConfig) -> Segment | None:
        """The segment a resumable config trains; None for a run trained in one `fit`."""
        if not trainer.resumable:
            return None
        return cls(trainer.max_steps, "steps") if trainer.max_steps is not None else cls(trainer.epochs)

    def stop_step(self, steps_per_epoch: int) -> int:
        return self.stop * (steps_per_epoch if self.unit == "epochs" else 1)

    def label(self, step: int, steps_per_epoch: int) -> int:
        """The metric step of a point of training: an epoch count, or an optimizer step count."""
        return math.ceil(step / steps_per_epoch) if self.unit == "epochs" else step


def steps_per_epoch(dataset: Dataset, trainer: DictConfig) -> int:
    """Optimizer steps in one epoch: the last batch may be short."""
    return math.ceil(len(dataset.x_train) / trainer.batch_size)


def fit_and_evaluate(
    cfg: DictConfig,
    start_at: StartingPoint,
    dataset: Dataset,
    tracker: RunTracker,
    folder: Path,
    logdir: Path,
    on_epoch_end: EpochCallback | None,
    evaluate_test: bool = True,
    segment: Segment | None = None,
) -> dict[str, float]:
    from study.tracking.tensorboard import ScalarWriter
    from study.training.callbacks import BestCheckpoint, EarlyStopping, EpochMetrics, StepBudget

    trainer = cfg.trainer
    config_file = write_replay_config(cfg, folder / "config.yaml", tracker.run_id)
    tracker.log_artifact(config_file)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    writer = ScalarWriter(logdir)
    labels: list[int] = []  # the metric step of each history entry
    sinks = [
        lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch),
        writer.write,
        lambda epoch, metrics: labels.append(epoch),
    ]
    epoch_metrics = EpochMetrics(len(dataset.x_train), trainer.batch_size, sinks, on_epoch_end)
    epoch_steps = steps_per_epoch(dataset, trainer)
    model, earlier = start_at.model, start_at.earlier
    callbacks = [
        epoch_metrics,
        # A resumed segment keeps the earlier segments' best.keras unless it beats it.
        BestCheckpoint(checkpoints / "best.keras", start_at.best_so_far),
    ]
    early = None
    if trainer.early_stopping.patience is not None:  # after the metrics: a pruned trial stops first
        early = EarlyStopping(
            trainer.early_stopping, start_at.monitored, restore_best_weights=segment is None
        )
        callbacks.append(early)
    epochs = trainer.epochs
    if trainer.max_steps is not None and segment is None:
        epochs = math.ceil(trainer.max_steps / epoch_steps)
        callbacks.append(StepBudget(trainer.max_steps, epoch_steps))
    start = time.perf_counter()
    try:
        if segment is not None:
            if early is None or not early.exhausted:  # early stopping may have ended the run before
                fit_segment(model, dataset, trainer, callbacks, segment, start_at.first_step)
        else:
            fit_run(model, dataset, trainer, callbacks, epochs)
    finally:
        writer.close()
        # Curves and checkpoints written so far are kept, also for a failed or pruned run.
        tracker.log_artifact(writer.logdir, "tensorboard")
        tracker.log_artifact(checkpoints, "checkpoints")
    train_seconds = time.perf_counter() - start
    model.save(checkpoints / "last.keras")
    tracker.log_artifact(checkpoints / "last.keras", "checkpoints")
    test_metrics = {}
    if evaluate_test:
        test_loss, test_accuracy = model.evaluate(
            dataset.x_test, dataset.y_test, batch_size=trainer.eval_batch_size, verbose=0
        )
        test_metrics = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    if early is not None and early.stopped_epoch > 0:  # Keras counts epochs from 0
        test_metrics["stopped_epoch"] = float(early.stopped_epoch + 1)
    return summarize(epoch_metrics.history, test_metrics, train_seconds, tracker, labels, earlier)


def summarize(
    history: list[dict[str, float]],
    test_metrics: dict[str, float],
    train_seconds: float,
    tracker: RunTracker,
    labels: Sequence[int] | None = None,
    earlier: Sequence[tuple[int, float]] = (),
) -> dict[str, float]:
    """Final metrics: the last epoch's, the best validation accuracy and the test figures.

    `labels` are the metric steps of `history` (1, 2, ... by default); `earlier` the
    (step, val_accuracy) points of the run's earlier segments, which the best includes.
    """
    labels = list(labels) if labels else list(range(1, len(history) + 1))
    curve = [*earlier, *zip(labels, (metrics["val_accuracy"] for metrics in history), strict=True)]
    best_step, best_value = max(curve, key=lambda point: point[1])  # the first best on ties
    summary = {
        "best_val_accuracy": best_value,
        "best_epoch": float(best_step),
        **test_metrics,
        "train_seconds": train_seconds,
    }
    tracker.log_metrics(summary, step=curve[-1][0])
    last = history[-1] if history else {}
    return {**last, **summary, "epochs": float(len(history))}


def fit_run(
    model: keras.Model,
    dataset: Dataset,
    trainer: DictConfig,
    callbacks: list[keras.callbacks.Callback],
    epochs: int,
) -> None:
    """Train `epochs` epochs in one `fit`, fed by `run_inputs`."""
    inputs, reseed = run_inputs(model, dataset, trainer, epochs)
    model.fit(
        **inputs,
        epochs=epochs,
        validation_data=(dataset.x_val, dataset.y_val),
        validation_batch_size=trainer.eval_batch_size,
        callbacks=[*reseed, *callbacks],
        verbose=trainer.verbose,
    )


def run_inputs(
    model: keras.Model, dataset: Dataset, trainer: DictConfig, epochs: int
) -> tuple[dict, list[keras.callbacks.Callback]]:
    """`fit` arguments and callbacks that train `epochs` epochs in one `fit`.

    Under TensorFlow, epoch e reads the examples in the order `epoch_order` gives, and a
    callback sets dropout's stream for it as `seed_random_layers` does, as in `fit_segment`:
    a run gets the same numbers trained in one `fit` or in segments. Other backends: Keras
    shuffles.
    """
    import keras

    from study.training import backend

    size = len(dataset.x_train)
    orders = np.stack([epoch_order(trainer.seed, epoch, size) for epoch in range(epochs)])
    inputs = backend.batches_in_orders(dataset.x_train, dataset.y_train, trainer.batch_size, orders)
    if inputs is None:
        return {"x": dataset.x_train, "y": dataset.y_train, "batch_size": trainer.batch_size}, []
    reseed = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seed_random_layers(model, trainer.seed, epoch, 0)
    )
    return inputs, [reseed]


def fit_segment(
    model: keras.Model,
    dataset: Dataset,
    trainer: DictConfig,
    callbacks: list[keras.callbacks.Callback],
    segment: Segment,
    first_step: int,
) -> None:
    """Train from optimizer step `first_step` (where the run's checkpoint is) to the segment's
    end, one `fit` per epoch or part of an epoch, each on that epoch's examples in the order
    `epoch_order` gives. A checkpoint already at the end (a retry of a segment whose worker died
    after saving it) trains nothing.

    Keras numbers the epoch of each `fit` by its metric step (`initial_epoch`), so the callbacks
    see the run's own x-axis: epochs, or optimizer steps for a segment counted in steps.
    """
    from study.training import backend

    size = len(dataset.x_train)
    epoch_steps = steps_per_epoch(dataset, trainer)
    stop = segment.stop_step(epoch_steps)
    step = first_step
    while step < stop:
        epoch, offset = divmod(step, epoch_steps)
        end = min(stop, (epoch + 1) * epoch_steps)
        picked = epoch_order(trainer.seed, epoch, size)[
            offset * trainer.batch_size : (end - epoch * epoch_steps) * trainer.batch_size
        ]
        label = segment.label(end, epoch_steps)
        seed_random_layers(model, trainer.seed, epoch, offset)
        model.fit(
            **backend.in_order_batches(dataset.x_train[picked], dataset.y_train[picked], trainer.batch_size),
            initial_epoch=label - 1,
            epochs=label,
            validation_data=(dataset.x_val, dataset.y_val),
            validation_batch_size=trainer.eval_batch_size,
            callbacks=callbacks,
            verbose=trainer.verbose,
        )
        step = end
        if model.stop_training:  # early stopping
            break


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the training examples in `epoch`: a function of (seed, epoch) alone, so a run
    resumed at any step sees the data a run trained straight through would have seen."""
    return np.random.default_rng([seed % 2**32, epoch]).permutation(size)


def seed_random_layers(model: keras.Model, seed: int, epoch: int, offset: int) -> None:
    """Set the random stream of the model's random layers (dropout) to where it is `offset` steps
    into `epoch`: a stream per epoch, drawn from (seed, epoch, layer), advanced one draw per
    train step. A Keras checkpoint does not keep the seed generators' state; this makes a
    resumed run draw the same dropout masks as one trained straight through."""
    import keras

    states = [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]
    for index, state in enumerate(states):
        stream = int(np.random.default_rng([seed % 2**32, epoch, index]).integers(1, 2**31 - 1))
        state.assign(np.array([stream, offset], dtype=keras.backend.standardize_dtype(state.dtype)))
