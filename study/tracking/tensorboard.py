"""TensorBoard event files, written with TensorBoard's own writer.

TensorBoard's `EventFileWriter` and protos need no TensorFlow, so the same code serves the
TensorFlow and the JAX backends (Keras' own TensorBoard callback needs `tf.summary`).
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# Metric name -> TensorBoard tag; a shared prefix puts train and validation in one section.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "epoch_seconds": "speed/epoch_seconds",
    "images_per_second": "speed/images_per_second",
}


class ScalarWriter:
    """Writes one event per epoch with every metric as a scalar."""

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(str(logdir))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        values = [
            Summary.Value(tag=TAGS.get(name, name), simple_value=float(value))
            for name, value in metrics.items()
        ]
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def close(self) -> None:
        self._writer.close()


def write_hparams(logdir: Path, hparams: dict[str, object], trial_id: str) -> None:
    """A trial's hyperparameters, for TensorBoard's HParams dashboard (one session per run)."""
    from tensorboard.plugins.hparams import summary_v2

    logdir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(logdir), filename_suffix=".hparams")
    summary = summary_v2.hparams_pb(_hparam_values(hparams), trial_id=trial_id)
    writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def write_hparams_config(logdir: Path, hparam_names: list[str], metric_tags: list[str]) -> None:
    """The study-level HParams table: every searched hyperparameter and the metric columns."""
    from tensorboard.plugins.hparams import summary_v2

    logdir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(logdir), filename_suffix=".hparams_config")
    columns = [summary_v2.HParam(name) for name in sorted(hparam_names)]
    metrics = [summary_v2.Metric(tag) for tag in metric_tags]
    summary = summary_v2.hparams_config_pb(hparams=columns, metrics=metrics)
    writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def _hparam_values(hparams: dict[str, object]) -> dict[str, object]:
    # HParams take bool, int, float or str.
    return {
        name: value if isinstance(value, bool | int | float | str) else str(value)
        for name, value in hparams.items()
    }
