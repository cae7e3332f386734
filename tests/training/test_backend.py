"""What a replay restores of the run it replays (backend, threads, cores) and what it cannot,
each said in one line; computed from the run's tags, without a run or a backend."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from study.training.backend import Restored, Threads, available_cores, restored

WORKER = Threads.share(1, None)  # a worker's share of a study with as many workers as cores


def tags_of(threads: Threads | None, backend: str = "tensorflow", device: str = "CPU: x86_64") -> dict:
    kind = device.split(":")[0]
    tags = {"keras.backend": backend, "device": device, "device.kind": kind}
    return {**tags, **threads.as_tags()} if threads else tags


def test_a_workers_threads_are_its_share_and_come_back_from_its_tags():
    assert WORKER.environment() == {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    }
    assert Threads.from_tags(WORKER.as_tags()) == WORKER
    assert Threads.from_tags({"threads.cores": "2"}) is None  # a run logged before all three were


def test_this_process_threads_default_to_its_cores():
    cores = len(available_cores())
    assert Threads.in_effect({}) == Threads(cores, cores, cores, None)
    assert Threads.in_effect({"TF_NUM_INTRAOP_THREADS": "3", "XLA_FLAGS": "--a"}).intra_op == 3


def test_the_replay_gets_the_runs_backend_threads_and_cores():
    here = {"PATH": "/bin", "OMP_NUM_THREADS": "8", "XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    setup = restored("r1", tags_of(WORKER, backend="jax"), here)
    assert setup.problems == [] and setup.notes == []
    assert setup.environment == {"PATH": "/bin", "KERAS_BACKEND": "jax", **WORKER.environment()}
    assert setup.cores == (available_cores()[:1] if len(available_cores()) > 1 else None)


def test_a_run_without_xla_flags_replays_without_the_ones_set_here():
    whole_machine = Threads(len(available_cores()), len(available_cores()), len(available_cores()))
    setup = restored("r1", tags_of(whole_machine), {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"})
    assert "XLA_FLAGS" not in setup.environment
    assert setup.cores is None  # every core, as the original had


def test_the_replays_process_starts_on_the_runs_cores():
    setup = Restored({**os.environ}, cores=available_cores()[:1])
    count = "import os; print(len(os.sched_getaffinity(0)))"
    done = subprocess.run(
        [sys.executable, "-c", count], capture_output=True, text=True, check=True, **setup.popen_arguments()
    )
    assert done.stdout.strip() == "1"


def test_an_explicit_other_keras_backend_is_a_problem_that_names_both():
    setup = restored("r1", tags_of(WORKER, backend="jax"), {"KERAS_BACKEND": "tensorflow"})
    assert setup.problems == [
        "KERAS_BACKEND=tensorflow is set, but run r1 trained on jax (keras.backend); "
        "unset KERAS_BACKEND to replay on jax"
    ]
    assert setup.environment["KERAS_BACKEND"] == "tensorflow"  # the user's choice, with --force


@pytest.mark.skipif(importlib.util.find_spec("openvino") is not None, reason="openvino is installed")
def test_a_backend_not_installed_is_a_problem():
    setup = restored("r1", tags_of(WORKER, backend="openvino"), {})
    expected = "run r1 trained on the Keras backend openvino (keras.backend), not installed here"
    assert setup.problems == [expected]
    assert "KERAS_BACKEND" not in setup.environment


def test_a_run_logged_before_the_thread_tags_replays_with_this_machines_and_says_so():
    setup = restored("r1", tags_of(None), {"OMP_NUM_THREADS": "8"})
    expected = "run r1 has no threads.cores tag (an older study's): it replays on this machine's threads"
    assert setup.notes == [expected]
    assert setup.environment["OMP_NUM_THREADS"] == "8" and setup.cores is None


def test_more_cores_than_here_are_noted_for_jax_only():
    more = len(available_cores()) + 1
    threads = Threads(more, more, more)
    jax = restored("r1", tags_of(threads, backend="jax"), {})
    assert jax.notes == [
        f"run r1 ran on {more} CPU cores, this process may use {more - 1}: JAX sizes its threads by the cores"
    ]
    assert restored("r1", tags_of(threads), {}).notes == []  # TensorFlow takes TF_NUM_*_THREADS as set
    assert jax.environment["TF_NUM_INTRAOP_THREADS"] == str(more)


def test_a_gpu_run_on_a_machine_without_a_gpu_is_a_problem():
    """The probe starts TensorFlow in a new process (seconds) and sees no GPU there."""
    no_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    no_gpu.pop("KERAS_BACKEND", None)
    setup = restored("r1", tags_of(WORKER, device="GPU: NVIDIA H100 80GB HBM3"), no_gpu)
    (problem,) = setup.problems
    expected = "run r1 trained on GPU: NVIDIA H100 80GB HBM3; this machine would replay it on CPU:"
    assert problem.startswith(expected)
