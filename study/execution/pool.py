"""The driver's worker processes: start them, replace the ones that die, stop them all.

Workers are `python -m study.worker SPEC.json` processes sharing the study storage. Each gets
its environment (CPU cores or a GPU slot) before its interpreter starts, so the backend
starts with it, and dies with the driver (Linux parent-death signal). Stopping is bounded:
Ctrl-C or SIGTERM asks every worker to stop (they end their trials and runs, then exit); a
second Ctrl-C, or a worker still alive after `SHUTDOWN_SECONDS`, is SIGKILLed, and the
driver fails and retries what it was running. No worker outlives its driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from study.execution.spec import WorkerSpec
from study.training.backend import Threads, available_cores

log = logging.getLogger("study.sweep")

MAX_RESTARTS_PER_WORKER = 3
SHUTDOWN_SECONDS = 25  # longer than a worker's own exit grace (study.signals)
GPU_MEMORY_SHARE = 0.9  # of one GPU, split between the trials that share it


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    cores: list[int]
    process: subprocess.Popen | None = None
    restarts: int = 0


class WorkerPool:
    def __init__(
        self,
        study_cfg: DictConfig,
        spec: WorkerSpec,
        logs: Path,
        first_index: int = 0,
        gpu_memory_share: float | None = None,
    ):
        self.spec = spec
        self.logs = logs
        # Drivers that share runs_dir (and the study) each write their own spec files.
        self.session = uuid.uuid4().hex[:8]
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workers = [
            Worker(index, env, cores)
            for index, (env, cores) in enumerate(worker_slots(study_cfg, gpu_memory_share), first_index)
        ]

    @property
    def alive(self) -> bool:
        return any(worker.process is not None for worker in self.workers)

    def start(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def reap(self, may_restart: Callable[[], bool]) -> None:
        """Notice workers that exited; replace a failed one while `may_restart()` says so."""
        for worker in self.workers:
            if worker.process is None or worker.process.poll() is None:
                continue
            code, worker.process = worker.process.returncode, None
            if code == 0:
                continue
            if worker.restarts >= MAX_RESTARTS_PER_WORKER or not may_restart():
                log.warning("worker %d exited with %d (log: %s)", worker.index, code, self.log_file(worker))
                continue
            worker.restarts += 1
            log.warning(
                "worker %d exited with %d; starting a replacement (log: %s)",
                worker.index,
                code,
                self.log_file(worker),
            )
            self._start(worker)

    def stop(self) -> None:
        """Ask every worker to stop and wait; a second Ctrl-C (or the time limit) kills them."""
        processes = [w.process for w in self.workers if w.process is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.time() + SHUTDOWN_SECONDS
        try:
            for process in processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.time()))
        except KeyboardInterrupt:
            print("second interrupt: killing the workers", file=sys.stderr, flush=True)
        finally:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kill and wait must finish
            try:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                    process.wait()
            finally:
                signal.signal(signal.SIGINT, previous)
        for worker in self.workers:
            worker.process = None

    def remove_spec_files(self) -> None:
        for worker in self.workers:
            self.spec_file(worker).unlink(missing_ok=True)

    def _start(self, worker: Worker) -> None:
        spec = WorkerSpec(**{**self.spec.__dict__, "worker_index": worker.index, "cores": worker.cores})
        spec_file = spec.write(self.spec_file(worker))
        with open(self.log_file(worker), "a") as log_file:  # the child keeps its own handle
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "study.worker", str(spec_file)],
                env=worker.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=terminate_with_parent,
            )

    def spec_file(self, worker: Worker) -> Path:
        return self.logs / f"worker_{worker.index}.{self.session}.json"

    def log_file(self, worker: Worker) -> Path:
        return self.logs / f"worker_{worker.index}.log"


def terminate_with_parent() -> None:
    """In a new worker: get SIGTERM when the driver dies, even by SIGKILL (Linux), so no worker
    trains on as an orphan; it ends its trial and run cleanly instead."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def worker_slots(
    study_cfg: DictConfig, gpu_memory_share: float | None = None
) -> list[tuple[dict[str, str], list[int]]]:
    """(environment, CPU cores) for each worker.

    With study.gpus, there is one worker per slot (gpus x trials_per_gpu); each sees only its
    GPU and takes its share of the GPU's memory (JAX preallocates that share; TensorFlow grows
    as needed). Without, study.n_workers workers split the CPU cores between them instead of
    each starting a thread per core.
    """
    base_env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if study_cfg.gpus:
        slots = [gpu for gpu in study_cfg.gpus for _ in range(study_cfg.trials_per_gpu)]
        if study_cfg.n_workers not in (1, len(slots)):
            log.warning(
                "study.n_workers=%d ignored: the %d GPU slots (gpus x trials_per_gpu) set the workers",
                study_cfg.n_workers,
                len(slots),
            )
        # A Ray actor given a fraction of a GPU takes that fraction (`gpu_memory_share`).
        share = f"{gpu_memory_share or GPU_MEMORY_SHARE / study_cfg.trials_per_gpu:.3f}"
        gpu_env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_MEM_FRACTION": share}
        return [({**base_env, **gpu_env, "CUDA_VISIBLE_DEVICES": str(gpu)}, []) for gpu in slots]
    base_env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    cores = available_cores()
    workers = study_cfg.n_workers
    if workers == 1:
        return [(base_env, [])]  # one worker uses every core
    slots = []
    for index in range(workers):
        share = cores[index::workers] or [cores[index % len(cores)]]
        # Each trial's run tags these (and its cores), and study.reproduce restores them.
        threads = Threads.share(len(share), os.environ.get("XLA_FLAGS"))
        slots.append(({**base_env, **threads.environment()}, share))
    return slots
