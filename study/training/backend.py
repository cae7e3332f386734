"""Everything that depends on which Keras backend runs: seeding, input pipelines, device facts,
the CPU threads, versions.

TensorFlow is imported here only, and only when it is the backend, so model and training code
run unchanged with KERAS_BACKEND=jax on machines without TensorFlow. Keras itself is imported
by the functions that need it: versions and GPU indices are known without starting a backend.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from study.core.names import (
    BACKEND_TAG,
    CORES_TAG,
    DEVICE_KIND_TAG,
    DEVICE_TAG,
    INTER_OP_THREADS_TAG,
    INTRA_OP_THREADS_TAG,
    XLA_FLAGS_TAG,
)

if TYPE_CHECKING:
    import numpy as np

# The environment that sets a process's CPU threads; each backend reads it when it starts.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")
SINGLE_THREADED_EIGEN = "--xla_cpu_multi_thread_eigen=false"


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


def device_kind(device: str) -> str:
    """CPU, GPU or TPU, from a `device_name()`."""
    return device.split(":", 1)[0]


DEVICE_PROBE_SECONDS = 120  # a backend that starts a GPU takes seconds; one stuck in its driver, forever


def probed_device(environment: dict[str, str]) -> str:
    """The device a new process with `environment` trains on, asked of its backend (seconds):
    this process's backend, if it has one, may be another."""
    probe = "from study.training.backend import device_name; print(device_name())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=DEVICE_PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return f"none (its backend did not start in {DEVICE_PROBE_SECONDS} s)"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return f"none (its backend exited with {done.returncode})"
    return lines[-1]


def is_installed(backend: str) -> bool:
    """Whether the Keras backend's package can be imported here (each is named as its package)."""
    return importlib.util.find_spec(backend) is not None


def available_cores() -> list[int]:
    """The CPU cores this process may run on (a study worker's share, or a `taskset`)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Threads:
    """How a CPU run splits its work. The split decides the order of floating-point sums, so the
    same config and seed give other numbers with other counts: a trial of a 2-worker study (one
    core each) and its replay on both cores differed by 6e-8 (TensorFlow) to 3e-3 (JAX) on the
    digits CNN. TensorFlow sizes its pools by the two variables, else by the cores; JAX (XLA)
    by the cores the process may run on, so a replay restores those too."""

    cores: int
    intra_op: int
    inter_op: int
    xla_flags: str | None = None

    @classmethod
    def in_effect(cls, environment: dict[str, str] | None = None) -> Threads:
        """This process's, as its backend reads them at its start."""
        environment = os.environ if environment is None else environment
        cores = len(available_cores())
        intra_op, inter_op = (environment.get(name, "") for name in THREAD_VARIABLES[:2])
        return cls(
            cores,
            int(intra_op) if intra_op.isdigit() else cores,  # not a count: the default
            int(inter_op) if inter_op.isdigit() else cores,
            environment.get("XLA_FLAGS") or None,
        )

    @classmethod
    def share(cls, cores: int, xla_flags: str | None) -> Threads:
        """A study worker's: a thread per core of its share, one op at a time, and XLA's Eigen
        single-threaded, so the workers do not fight over the cores."""
        return cls(cores, cores, 1, f"{xla_flags or ''} {SINGLE_THREADED_EIGEN}".strip())

    def environment(self) -> dict[str, str]:
        """The variables that give a new process these threads (with its cores limited to
        `cores`): XLA_FLAGS only when set, so a caller removes any other value."""
        variables = {
            "TF_NUM_INTRAOP_THREADS": str(self.intra_op),
            "TF_NUM_INTEROP_THREADS": str(self.inter_op),
            "OMP_NUM_THREADS": str(self.intra_op),
        }
        return {**variables, "XLA_FLAGS": self.xla_flags} if self.xla_flags else variables

    def as_tags(self) -> dict[str, str]:
        tags = {CORES_TAG: str(self.cores), INTRA_OP_THREADS_TAG: str(self.intra_op)}
        tags[INTER_OP_THREADS_TAG] = str(self.inter_op)
        return {**tags, XLA_FLAGS_TAG: self.xla_flags} if self.xla_flags else tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Threads | None:
        """A run's, from its tags; None for a run logged before they were (or tags edited by hand)."""
        try:
            counts = [int(tags[key]) for key in (CORES_TAG, INTRA_OP_THREADS_TAG, INTER_OP_THREADS_TAG)]
        except (KeyError, ValueError):
            return None
        return cls(*counts, tags.get(XLA_FLAGS_TAG) or None)


@dataclass(frozen=True)
class Restored:
    """How to start a process that trains as a logged run did: its environment (the backend,
    the threads) and its CPU cores, set before its interpreter starts, since Keras reads
    KERAS_BACKEND when imported and each backend its threads when it starts."""

    environment: dict[str, str]
    cores: list[int] | None = None  # None: every core this process has
    problems: list[str] = field(default_factory=list)  # not restored here: a replay is refused
    notes: list[str] = field(default_factory=list)  # restored, yet the numbers may differ: said

    def popen_arguments(self) -> dict:
        """subprocess arguments that start the process so."""
        pinned = self.cores and hasattr(os, "sched_setaffinity")  # Linux: elsewhere all cores
        return {"env": self.environment, "preexec_fn": self._pin if pinned else None}

    def _pin(self) -> None:
        os.sched_setaffinity(0, self.cores)


def restored(run_id: str, tags: Mapping[str, str], environment: Mapping[str, str] | None = None) -> Restored:
    """What a process that replays run `run_id`, logged with `tags`, needs on top of
    `environment` (this process's): each problem and note one line that names the difference."""
    environment = dict(os.environ if environment is None else environment)
    backend = tags.get(BACKEND_TAG)
    problems = [problem] if (problem := _backend_problem(run_id, backend, environment)) else []
    if backend and not problems:
        environment["KERAS_BACKEND"] = backend  # over ~/.keras/keras.json too
    environment, cores, notes = _restored_threads(run_id, tags, environment)
    logged = tags.get(DEVICE_TAG, "CPU")
    kind = tags.get(DEVICE_KIND_TAG) or device_kind(logged)
    if kind != "CPU" and not problems:  # the probe starts the backend: only for a GPU's (TPU's) run
        device = probed_device(environment)
        if device_kind(device) != kind:
            problems.append(f"run {run_id} trained on {logged}; this machine would replay it on {device}")
        elif device != logged:
            notes.append(f"run {run_id} trained on {logged}; it replays on {device}: other kernels")
    return Restored(environment, cores, problems, notes)


def _restored_threads(
    run_id: str, tags: Mapping[str, str], environment: dict[str, str]
) -> tuple[dict[str, str], list[int] | None, list[str]]:
    """The environment with the run's thread variables (and no others: a variable set here but
    not for the run would change the numbers), the cores to run on, and what may still differ."""
    threads = Threads.from_tags(tags)
    if threads is None:
        return (
            environment,
            None,
            [f"run {run_id} has no {CORES_TAG} tag (an older study's): it replays on this machine's threads"],
        )
    environment = {k: v for k, v in environment.items() if k not in THREAD_VARIABLES}
    environment.update(threads.environment())
    here = available_cores()
    cores = here[: threads.cores] if threads.cores < len(here) else None
    if threads.cores > len(here) and tags.get(BACKEND_TAG) == "jax":  # TensorFlow takes its counts as set
        note = f"run {run_id} ran on {threads.cores} CPU cores, this process may use {len(here)}"
        return environment, cores, [f"{note}: JAX sizes its threads by the cores"]
    return environment, cores, []


def _backend_problem(run_id: str, backend: str | None, environment: Mapping[str, str]) -> str | None:
    """Why the run's backend cannot be the replay's: a KERAS_BACKEND set to another one is the
    user's choice, not overruled; a backend not installed cannot start."""
    chosen = environment.get("KERAS_BACKEND")
    if backend is None:
        return None
    if chosen and chosen != backend:
        return (
            f"KERAS_BACKEND={chosen} is set, but run {run_id} trained on {backend} ({BACKEND_TAG}); "
            f"unset KERAS_BACKEND to replay on {backend}"
        )
    if not is_installed(backend):
        return f"run {run_id} trained on the Keras backend {backend} ({BACKEND_TAG}), not installed here"
    return None
