"""Workers that join their study on their own: one task of a Slurm job array
(`launcher=slurm`, run by submitit on a compute node), or one Ray actor (`launcher=ray`,
`ray_worker`).

It composes the study's config from the driver's overrides, loads the study and starts the
workers its allocation holds (`study.trials_per_gpu` per GPU Slurm gave it, else
`study.n_workers`), each the same `study.worker` process as on one machine: heartbeat,
retries, ASHA promotions from checkpoints. It does not need its driver: when the study is done
it writes the outputs, if no other process claimed them first (`outputs`).

Slurm's signals: `scancel` or a preemption sends SIGTERM, and the trials in flight end
interrupted and are retried by the study; the time limit's warning (SIGUSR2,
`launcher.signal_delay_s` before it) does the same, then submitit requeues the task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from study.execution.spec import WorkerSpec

log = logging.getLogger("study.worker")


def join_study(
    spec: WorkerSpec,
    label: str,
    first_index: int,
    holder: Any,
    slots: Callable[[DictConfig], DictConfig],
    gpu_memory_share: float | None = None,
) -> int:
    """Run the study's workers here until the study is done, then write its outputs unless
    another process claimed them. `slots(settings)`: the study settings with the GPUs (or
    workers) this allocation holds; `holder.driver` is set to the running `Driver` (so that a
    signal handler can stop its workers); `label` names its log folder."""
    import optuna

    from study.config.checks import checked_config, checked_sweep_config
    from study.config.compose import sweep_composer
    from study.execution.driver import Driver
    from study.execution.outputs import claim_outputs, write_outputs
    from study.execution.pool import WorkerPool
    from study.execution.storage import make_storage
    from study.reporting.noise import study_command
    from study.search.asha import ladder_for
    from study.search.budget import DONE, TIMEOUT, Budget
    from study.tracking.runs import RunTracker

    cfg = sweep_composer(spec.config_dir, spec.config_name, spec.overrides)([])
    settings, base = checked_sweep_config(cfg), checked_config(cfg)
    storage = make_storage(settings.study, base.mlflow.tracking_uri)
    study = optuna.load_study(study_name=settings.study.name, storage=storage)
    study_dir = Path(settings.study.output_dir)
    local_settings = slots(settings)
    log.info("%s: %s", label, describe_slots(local_settings.study))
    logs = study_dir / "logs" / label
    pool = WorkerPool(local_settings.study, spec, logs, first_index, gpu_memory_share)
    budget = Budget.of(settings, spec.session_start, spec.deadline, ladder_for(settings, base))
    epochs = None if base.trainer.max_steps else base.trainer.epochs
    holder.driver = Driver(study, local_settings, base, spec, study_dir, budget, epochs, pool=pool)
    holder.driver.run()
    verdict = budget.judge(study.get_trials(deepcopy=False))
    if verdict.stop not in (DONE, TIMEOUT) or not verdict.done or not claim_outputs(storage, settings):
        log.info("%s: stopping (%s)", label, verdict.reason())
        return 0
    log.info("%s: the study is done; this one writes its outputs", label)
    parent = RunTracker.resume(base.mlflow, spec.parent_run_id)
    command = study_command(spec.config_dir, spec.config_name, spec.overrides)
    write_outputs(study, settings, base, parent, study_dir, command, verdict.stop == DONE, claimed=True)
    parent.end("FINISHED")
    return 0


def visible_gpu_indices() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [int(gpu) for gpu in visible.split(",") if gpu.strip().isdigit()]


def with_study_keys(settings: DictConfig, **values: Any) -> DictConfig:
    plain = OmegaConf.to_container(settings, resolve=True)
    plain["study"].update(values)
    return OmegaConf.create(plain)


def describe_slots(study_cfg: DictConfig) -> str:
    if study_cfg.gpus:
        return f"GPUs {list(study_cfg.gpus)} x {study_cfg.trials_per_gpu} trials each"
    return f"{study_cfg.n_workers} worker(s) on CPUs"
