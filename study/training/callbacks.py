"""Keras callbacks that turn each epoch into one record of metrics for the trackers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import keras

# Keras log key -> metric name used in MLflow, TensorBoard and the returned metrics.
METRIC_NAMES = {
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
}

EpochSink = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""


class EpochMetrics(keras.callbacks.Callback):
    """After each epoch: loss and accuracy, epoch seconds and training images per second.

    Calls every sink with (epoch, metrics), epoch counting from 1, raises NonFiniteLossError
    if the training loss is NaN or infinite, then calls `on_epoch_end` (which may raise to
    stop training). It reads the step counter once per epoch and adds no per-batch work.
    """

    def __init__(
        self,
        num_train_examples: int,
        batch_size: int,
        sinks: list[EpochSink],
        on_epoch_end: EpochSink | None = None,
    ):
        super().__init__()
        self.num_train_examples = num_train_examples
        self.batch_size = batch_size
        self.sinks = sinks
        self.user_hook = on_epoch_end
        self.history: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None
        self._start_step = self._steps()

    def on_test_begin(self, logs=None):
        if self._train_end is None:  # validation starts: training of this epoch is done
            # Reading the step counter waits for the steps the backend still has queued
            # (GPUs, JAX), so they count as training time, not validation.
            self._train_steps = self._steps()
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        train_seconds = (self._train_end or end) - self._start
        steps = (self._train_steps if self._train_end else self._steps()) - self._start_step
        images = min(steps * self.batch_size, self.num_train_examples)
        metrics = {name: float(logs[key]) for key, name in METRIC_NAMES.items() if key in logs}
        metrics["epoch_seconds"] = end - self._start
        metrics["images_per_second"] = images / train_seconds if train_seconds > 0 else 0.0
        self.history.append(metrics)
        for sink in self.sinks:
            sink(epoch + 1, metrics)
        if not math.isfinite(metrics["train_loss"]):
            raise NonFiniteLossError(f"train_loss is {metrics['train_loss']} after epoch {epoch + 1}")
        if self.user_hook is not None:  # after the check: a diverged run fails, never "pruned"
            self.user_hook(epoch + 1, metrics)

    def _steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint, saving the model whenever val_accuracy improves at an epoch end.

    It is marked async-safe: its per-batch hook does nothing when saving per epoch. Where Keras
    may run batch hooks from a thread (JAX; TensorFlow's backend never does), a callback with a
    per-batch hook that is not async-safe makes it run every batch's hooks in line, turning
    the logs into Python floats, so each train step waits for the one before it.
    """

    async_safe = True

    def __init__(self, path: Path, best_so_far: float | None = None):
        # best_so_far: a resumed run saves only a model better than its earlier segments' best.
        super().__init__(
            path,
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            save_freq="epoch",
            initial_value_threshold=best_so_far,
        )


class StepBudget(keras.callbacks.Callback):
    """Stops training after `max_steps` optimizer steps, mid-epoch if need be.

    It counts from the batch index Keras passes, so it never waits for the device.
    """

    def __init__(self, max_steps: int, steps_per_epoch: int):
        super().__init__()
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch * self.steps_per_epoch + batch + 1 >= self.max_steps:
            self.model.stop_training = True


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping for a run that may train in several fits (one per epoch, or a
    segment resumed in another process): one state for all the fits of this process, starting
    from the (step, value) points the run logged before, as if it had watched them."""

    def __init__(self, cfg, earlier: tuple[tuple[int, float], ...] = (), restore_best_weights: bool = True):
        super().__init__(
            monitor=cfg.monitor,
            min_delta=cfg.min_delta,
            patience=cfg.patience,
            mode="max" if cfg.monitor.endswith("accuracy") else "min",
            restore_best_weights=restore_best_weights and cfg.restore_best_weights,
        )
        super().on_train_begin()
        self._set_monitor_op()
        for _, value in earlier:  # Keras' own rule, replayed over the logged curve
            self.wait += 1
            if self._is_improvement(value, self.best):
                self.best, self.wait = value, 0

    def on_train_begin(self, logs=None):
        """Keras resets its state here; the next fit of the same run keeps counting instead."""

    @property
    def exhausted(self) -> bool:
        """The run's earlier segments already used up the patience: nothing more to train."""
        return self.wait >= self.patience

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0:  # only the fit that stopped the run restores its best weights
            super().on_train_end(logs)
