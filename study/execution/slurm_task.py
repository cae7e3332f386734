"""What each task of a study's Slurm job array runs (`launcher=slurm`): `StudyTask()(spec)`,
submitted by `slurm.submit_tasks` and run by submitit on a compute node. It joins the study
(`joined.join_study`) with the GPUs Slurm gave it; submitit's checkpoint hook ends its trials
before a requeue."""

from __future__ import annotations

import logging
import os
import signal
import sys

import submitit
from omegaconf import DictConfig

from study.execution.joined import join_study, visible_gpu_indices, with_study_keys
from study.execution.spec import WorkerSpec

WORKERS_PER_TASK = 64  # worker indices (sampler seeds, log files) of task k start at 64 k


class StudyTask(submitit.helpers.Checkpointable):
    """What each array task runs: `StudyTask()(spec)`."""

    def __init__(self) -> None:
        self.driver = None

    def __call__(self, spec: WorkerSpec) -> int:
        from study.core.errors import ConfigError
        from study.core.masking import mask_console, private_files
        from study.core.retry import StoreUnreachableError

        mask_console()
        private_files()
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            return run_task(self, spec)
        except (ConfigError, StoreUnreachableError) as error:  # one line in the job's log
            print(f"study.worker: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def checkpoint(self, spec: WorkerSpec) -> submitit.helpers.DelayedSubmission:
        """Slurm's time limit is near: end the trials (they are retried), then requeue."""
        if self.driver is not None:
            self.driver.pool.stop()
        # The requeue that follows makes Slurm send this task SIGTERM; the driver loop's handler
        # would cut submitit's `scontrol requeue` short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return submitit.helpers.DelayedSubmission(StudyTask(), spec)


def run_task(task: StudyTask, spec: WorkerSpec) -> int:
    task_id = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "local"))
    return join_study(spec, f"slurm-{job}_{task_id}", WORKERS_PER_TASK * int(task_id), task, with_slurm_gpus)


def with_slurm_gpus(settings: DictConfig) -> DictConfig:
    """The study settings with study.gpus = the GPUs Slurm gave this task (CUDA_VISIBLE_DEVICES)."""
    return with_study_keys(settings, gpus=visible_gpu_indices())
