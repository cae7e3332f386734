"""A study's workers as one Slurm job array (`launcher=slurm`), submitted through submitit.

`python -m study.sweep launcher=slurm ...` on a login node checks what it checks for local
workers, then the cluster (`check_cluster`: Slurm's commands, the partition, its GPUs) and that
every node can reach the stores (`check_stores_reachable`). It creates or resumes the study and
its parent run as before; then, instead of starting processes, it submits the array tasks that
are missing (each runs `study.execution.slurm_task.StudyTask`) and shows the live progress, read
from the stores. Ctrl-C detaches (the tasks go on); the same command re-attaches and submits
only what is missing; `launcher.cancel=true` cancels the study's jobs.

The study's jobs are found by name (`study-<study.name>`) among the user's jobs in the queue:
nothing else is kept on the login node, so any login node can re-attach.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from study.core.errors import ConfigError
from study.execution.reach import check_stores_reachable
from study.execution.spec import WorkerSpec

log = logging.getLogger("study.sweep")

MAX_REQUEUES = 10_000
SLURM_TIMEOUT_SECONDS = 30  # a controller that does not answer in this long is not there
CANCEL_WAIT_SECONDS = 120  # Slurm's KillWait (30 s by default) and an epilog, with room
# Queue states of a task that still runs, or will (squeue --states: every state it shows).
# A task being requeued passes through COMPLETING: it still counts.
ENDING_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL"}


def job_name(settings: DictConfig) -> str:
    return f"study-{settings.study.name}"


def slurm(*command: str) -> str:
    """The output of a Slurm command; its own error as one line when it fails."""
    if shutil.which(command[0]) is None:
        raise ConfigError(
            f"launcher=slurm: {command[0]} not found on PATH: run on a login node of a Slurm cluster, "
            "or pick launcher=local"
        )
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"launcher=slurm: {command[0]} did not answer in {SLURM_TIMEOUT_SECONDS} s (is slurmctld up?)"
        ) from None
    if result.returncode != 0:
        raise ConfigError(f"launcher=slurm: {' '.join(command[:2])} failed: {last_error_line(result.stderr)}")
    return result.stdout


def last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no output"])[-1]
    return line.removeprefix("sbatch: error: ").removeprefix("squeue: error: ")


def requested_gpus(launcher: DictConfig) -> int:
    """GPUs per task: launcher.gpus_per_node, else the count in launcher.gres (gpu:N, gpu:TYPE:N)."""
    if launcher.gpus_per_node:
        return launcher.gpus_per_node
    if launcher.gres:
        return int(launcher.gres.rpartition(":")[2])
    return 0


def check_cluster(launcher: DictConfig) -> None:
    """The partition exists and its nodes have the GPUs a task asks for: one line, before any
    store is written (sbatch would refuse the array only after the study was made)."""
    partitions = {}
    for line in slurm("sinfo", "--noheader", "--format=%P %G").splitlines():
        name, _, gres = line.strip().partition(" ")
        default = name.endswith("*")
        name = name.rstrip("*")
        partitions.setdefault(name, set()).add(gres)
        if default:
            partitions.setdefault("", set()).add(gres)
    partition = launcher.partition or ""
    if partition not in partitions:
        if not launcher.partition:
            raise ConfigError(
                "launcher.partition: expected a partition name (the cluster has no default one)"
            )
        choices = sorted(name for name in partitions if name)
        raise ConfigError(f"launcher.partition: expected one of {choices}, got {launcher.partition!r}")
    wanted = requested_gpus(launcher)
    most = max(node_gpus(gres) for gres in partitions[partition])
    if wanted > most:
        where = f"partition {launcher.partition}" if launcher.partition else "the default partition"
        key = "launcher.gpus_per_node" if launcher.gpus_per_node else "launcher.gres"
        raise ConfigError(
            f"{key}: expected at most {most} GPUs (the most a node of {where} has), got {wanted}"
        )


def node_gpus(gres: str) -> int:
    """GPUs in sinfo's %G of a node group: gpu:2, gpu:a100:4(S:0-1), (null)."""
    count = 0
    for item in gres.split(","):
        kind, _, rest = item.split("(")[0].partition(":")  # (S:0-1): the sockets, not a count
        if kind == "gpu":
            number = rest.rpartition(":")[2]
            count += int(number) if number.isdigit() else 0
    return count


def is_this_machine_alone(launcher: DictConfig) -> bool:
    """The partition's nodes are this machine (a one-node cluster): its loopback reaches them."""
    return partition_nodes(launcher) <= {socket.gethostname().split(".")[0]}


def partition_nodes(launcher: DictConfig) -> set[str]:
    partition = ["--partition", launcher.partition] if launcher.partition else []
    return set(slurm("sinfo", "--noheader", "--Node", "--format=%N", *partition).split())


def live_tasks(settings: DictConfig) -> list[str]:
    """The study's array tasks in the queue that run or will: ids such as 123_0."""
    output = slurm(
        "squeue",
        "--noheader",
        "--array",
        f"--user={getpass.getuser()}",
        f"--name={job_name(settings)}",
        "--format=%i %T",
    )
    tasks = []
    for line in output.splitlines():
        task, _, state = line.strip().partition(" ")
        if task and state not in ENDING_STATES:
            tasks.append(task)
    return tasks


def submit_tasks(settings: DictConfig, spec: WorkerSpec, study_dir: Path, count: int) -> list[str]:
    """Submit `count` array tasks of the study's workers; returns their ids."""
    try:
        import submitit
    except ImportError:
        raise ConfigError('launcher=slurm: needs submitit (pip install -e ".[slurm]")') from None
    from study.execution.slurm_task import StudyTask

    # A task is requeued at every time limit, as often as the study needs (submitit's default: 3).
    executor = submitit.AutoExecutor(
        folder=study_dir / "slurm" / "%j", cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES
    )
    executor.update_parameters(**submitit_parameters(settings))
    try:
        with executor.batch():
            jobs = [executor.submit(StudyTask(), spec) for _ in range(count)]
    except Exception as error:  # sbatch refused the array: its own reason, one line
        raise ConfigError(
            f"launcher=slurm: sbatch refused the job array: {last_error_line(str(error))}"
        ) from None
    return [job.job_id for job in jobs]


def submitit_parameters(settings: DictConfig) -> dict[str, Any]:
    """The launcher's fields under submitit's names (generic ones bare, Slurm's with slurm_)."""
    launcher = settings.launcher
    generic = {
        "name": job_name(settings),
        "timeout_min": launcher.timeout_min,
        "mem_gb": launcher.mem_gb,
        "gpus_per_node": launcher.gpus_per_node,
        "cpus_per_task": launcher.cpus_per_task,
        "stderr_to_stdout": True,
    }
    slurm_only = {
        "partition": launcher.partition,
        "gres": launcher.gres,
        "array_parallelism": launcher.array_parallelism,
        "account": launcher.account,
        "qos": launcher.qos,
        "constraint": launcher.constraint,
        "setup": list(launcher.setup) or None,
        "signal_delay_s": launcher.signal_delay_s,
        # A task on a node that fails goes back to the queue (Slurm's --requeue).
        "additional_parameters": {"requeue": True, **OmegaConf.to_container(launcher.additional_parameters)},
    }
    parameters = {key: value for key, value in generic.items() if value is not None}
    parameters.update({f"slurm_{key}": value for key, value in slurm_only.items() if value is not None})
    return parameters


class SlurmEngine:
    """The study's workers as the tasks of Slurm job arrays (`cluster.Engine`)."""

    noun = "task"
    detaches = True  # the tasks outlive the login node's command
    logs_hint = ", job logs: {study_dir}/slurm/"

    def __init__(self, settings: DictConfig):
        self.settings = settings

    @classmethod
    def open(cls, settings: DictConfig, base: DictConfig) -> SlurmEngine:
        """The cluster checked (its commands, partition, GPUs) and stores its nodes reach."""
        launcher = settings.launcher
        check_cluster(launcher)
        check_stores_reachable(
            settings, base, launcher.shared_filesystem, lambda: is_this_machine_alone(launcher)
        )
        return cls(settings)

    def live(self) -> list[str]:
        return live_tasks(self.settings)

    def start(self, count: int, spec: WorkerSpec, study_dir: Path) -> list[str]:
        return submit_tasks(self.settings, spec, study_dir, count)

    def cancel(self) -> list[str]:
        return cancel_tasks(self.settings)


def cancel_tasks(settings: DictConfig) -> list[str]:
    """Cancel the study's jobs; their workers end their trials, which the study retries."""
    tasks = live_tasks(settings)
    if tasks:
        slurm("scancel", f"--user={getpass.getuser()}", f"--name={job_name(settings)}")
        wait_until_gone(settings, tasks)
    return tasks


def wait_until_gone(settings: DictConfig, tasks: list[str]) -> None:
    """scancel only asks: each task stays in the queue, COMPLETING, while its worker ends its
    trial (up to Slurm's KillWait). Once they have left, the same command run next submits new
    tasks instead of attaching to ending ones (live_tasks counts COMPLETING: a task being
    requeued shows it too)."""
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while ending := sorted(set(tasks) & set(live_tasks(settings))):
        if time.monotonic() > deadline:
            log.warning("tasks %s are still ending after %d s", ", ".join(ending), CANCEL_WAIT_SECONDS)
            return
        time.sleep(1)
