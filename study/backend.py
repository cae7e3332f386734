"""Everything that depends on which Keras backend runs: seeding, device facts, versions.

TensorFlow is imported here only, and only when it is the backend, so model and training code
run unchanged with KERAS_BACKEND=jax on machines without TensorFlow.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import keras

VERSIONED_PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "numpy", "mlflow", "optuna", "hydra-core")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend, and ask the backend for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def device_name() -> str:
    """The accelerator training runs on, or the CPU."""
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


def package_versions() -> dict[str, str]:
    return dict(_installed_versions())  # a copy: callers may change theirs


@functools.cache  # installed versions do not change while a worker runs its trials
def _installed_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "study": _version("study")}
    for package in VERSIONED_PACKAGES:
        version = _version(package)
        if version:
            versions[package] = version
    return versions


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""
