"""Where a study's workers run (`launcher=local|slurm|ray`): the schemas of `conf/launcher/`.

The Slurm fields keep the names of hydra-submitit-launcher (and submitit), so a user's
`partition`, `gpus_per_node`, `timeout_min`, ... mean what they mean there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from study.config.fields import at_least, must


@dataclass
class LocalLauncherConfig:
    """This machine's worker processes (study.n_workers, or study.gpus x study.trials_per_gpu)."""

    name: str = "local"


GRES_PATTERN = r"gpu(:[A-Za-z0-9_.-]+)?:[1-9][0-9]*"


@dataclass
class SlurmLauncherConfig:
    """One Slurm job array of study workers, submitted through submitit (study/execution/slurm.py)."""

    name: str = "slurm"
    # Array tasks. Each runs study.trials_per_gpu trials per GPU it is given, or study.n_workers
    # trials on CPUs.
    workers: int = field(default=2, metadata=at_least(1))
    partition: str | None = None  # the cluster's default partition when null
    gpus_per_node: int | None = field(default=None, metadata=at_least(0, optional=True))
    gres: str | None = field(
        default=None, metadata=must("null or gpu:N or gpu:TYPE:N", lambda v: v is None or _is_gres(v))
    )
    cpus_per_task: int | None = field(default=None, metadata=at_least(1, optional=True))
    mem_gb: float | None = field(
        default=None, metadata=must("null or a number > 0", lambda v: v is None or v > 0)
    )
    timeout_min: int = field(default=60, metadata=at_least(1))
    array_parallelism: int = field(default=256, metadata=at_least(1))
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before a task (module load ...)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # more #SBATCH --key=value
    # Seconds before the time limit that Slurm warns a task (SIGUSR2): its trials end interrupted
    # and are retried, and the task is requeued.
    signal_delay_s: int = field(default=120, metadata=at_least(1))
    # The stores' files (a SQLite database, a journal file) are on a file system every node mounts.
    shared_filesystem: bool = False
    cancel: bool = False  # cancel this study's jobs (the trials they run are retried on resume)


@dataclass
class RayLauncherConfig:
    """Detached Ray actors in the study's namespace, one worker each (study/execution/ray_cluster.py)."""

    name: str = "ray"
    # auto (the cluster this machine belongs to, or RAY_ADDRESS), host:6379, ray://host:10001;
    # null: a Ray cluster on this machine for this session only (Ctrl-C stops it, no detaching).
    address: str | None = None
    workers: int = field(default=2, metadata=at_least(1))  # actors, one trial each at a time
    num_cpus: float = field(default=1.0, metadata=must("a number > 0", lambda v: v > 0))
    # GPUs per actor; null: 1 / study.trials_per_gpu on a cluster with GPUs, else 0.
    num_gpus: float | None = field(
        default=None, metadata=must("null or a number >= 0", lambda v: v is None or v >= 0)
    )
    max_restarts: int = field(default=3, metadata=at_least(0))  # an actor whose node was lost starts again
    shared_filesystem: bool = False  # as launcher=slurm's
    cancel: bool = False  # end this study's actors (the trials they run are retried on resume)


def _is_gres(value: str) -> bool:
    import re

    return re.fullmatch(GRES_PATTERN, value) is not None


LAUNCHER_SCHEMAS: dict[str, type] = {
    "local": LocalLauncherConfig,
    "slurm": SlurmLauncherConfig,
    "ray": RayLauncherConfig,
}
