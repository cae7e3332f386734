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
