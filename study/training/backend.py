"""Everything that depends on which Keras backend runs: seeding, input pipelines, device facts,
versions.

TensorFlow is imported here only, and only when it is the backend, so model and training code
run unchanged with KERAS_BACKEND=jax on machines without TensorFlow. Keras itself is imported
by the functions that need it: versions and GPU indices are known without starting a backend.
"""

from __future__ import annotations

import math
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend, and ask the backend for deterministic kernels."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def in_order_batches(x, y, batch_size: int) -> dict:
    """`fit` arguments that train on (x, y) in the order given, `batch_size` examples a step.

    Under TensorFlow: a tf.data pipeline with autotuning off. Keras turns NumPy arrays into one
    with autotuning on, and destroying its iterator when `fit` returns waits for the autotuning
    thread's next wake-up, up to a minute later: measured 30 s after each `fit` of the
    Deep-MNIST CNN on one CPU core, while its 550 steps take 52 s. Training in segments calls
    `fit` once per epoch or part of one, so it paid that wait at every epoch. The batches are
    the same either way; other backends get the arrays.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": False}
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return {"x": _without_autotuning(batches), "shuffle": False}


def batches_in_orders(x, y, batch_size: int, orders: np.ndarray) -> dict | None:
    """`fit` arguments for one `fit` of len(orders) epochs: epoch e reads (x, y) in the order
    `orders[e]` (a permutation of the examples), `batch_size` examples a step, the last batch
    of an epoch short if need be. None when the backend is not TensorFlow.

    A tf.data pipeline with autotuning off, as `in_order_batches`: with Keras' own pipeline a
    whole run's `fit` waited for the autotuning thread now and then between epochs and when it
    returned (measured: 3 epochs of the Deep-MNIST CNN on one core, 213 s against 146 s now).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    with tf.device("CPU:0"):  # input pipelines run on the CPU; the examples stay in host memory
        images, labels = tf.constant(x), tf.constant(y)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    batches = (
        tf.data.Dataset.from_tensor_slices(orders)
        .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
        .map(lambda picked: (tf.gather(images, picked), tf.gather(labels, picked)))
    )
    return {"x": _without_autotuning(batches), "steps_per_epoch": steps_per_epoch, "shuffle": False}


def _without_autotuning(batches):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(1).with_options(options)


def device_name() -> str:
    """The accelerator training runs on, or the CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return f"GPU: {details.get('device_name', gpus[0].name)}"
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform.upper()}: {device.device_kind}"
    return f"CPU: {platform.processor() or platform.machine()}"
