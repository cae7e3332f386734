"""A study's workers as Ray actors (`launcher=ray`): the `cluster.Engine` for Ray.

`python -m study.sweep launcher=ray launcher.address=...` connects to the cluster (nothing
listening there is one line, not Ray's minutes of retries), checks that it has the GPUs an
actor asks for and that its nodes reach the stores, and starts the missing actors: named
`worker-<k>` in the namespace `study-<study.name>`, detached, each one worker
(`ray_worker.StudyActor`) with `launcher.num_cpus` and `launcher.num_gpus` (1 /
study.trials_per_gpu on a cluster with GPUs: Ray places several trials on one GPU and sets
`CUDA_VISIBLE_DEVICES`). Without `launcher.address` Ray starts a cluster on this machine for
this session: its actors end with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import DictConfig

from study.core.errors import ConfigError
from study.execution.pool import GPU_MEMORY_SHARE
from study.execution.reach import check_stores_reachable
from study.execution.spec import WorkerSpec

PROBE_SECONDS = 5.0  # a cluster's port that does not answer in this long is not there
CLIENT_PORT = 10001  # Ray Client's default (ray://host)
ACTOR_PREFIX = "worker-"


def namespace_of(settings: DictConfig) -> str:
    return f"study-{settings.study.name}"


class RayEngine:
    noun = "actor"
    logs_hint = ", the actors' own: Ray's session logs"

    def __init__(self, settings: DictConfig, detaches: bool, gpus_per_actor: float):
        self.settings = settings
        self.launcher = settings.launcher
        self.detaches = detaches  # a cluster started for this session ends with it
        self.gpus_per_actor = gpus_per_actor
        # An actor that is not detached ends when its last handle goes: keep them.
        self.handles: dict[str, object] = {}

    @classmethod
    def open(cls, settings: DictConfig, base: DictConfig) -> RayEngine:
        launcher = settings.launcher
        check_stores_reachable(settings, base, launcher.shared_filesystem, lambda: True)  # files only, first
        connect(launcher.address, namespace_of(settings))
        check_stores_reachable(settings, base, launcher.shared_filesystem, cluster_is_this_machine)
        engine = cls(settings, launcher.address is not None, gpus_per_actor(launcher, settings.study))
        return engine

    def live(self) -> list[str]:
        import ray

        return sorted(name for name in ray.util.list_named_actors() if name.startswith(ACTOR_PREFIX))

    def start(self, count: int, spec: WorkerSpec, study_dir: Path) -> list[str]:
        import ray

        from study.execution.ray_worker import StudyActor

        taken = set(self.live())
        free = (f"{ACTOR_PREFIX}{k}" for k in range(len(taken) + count))
        names = [name for name in free if name not in taken][:count]
        share = GPU_MEMORY_SHARE * self.gpus_per_actor if 0 < self.gpus_per_actor < 1 else 0.0
        actor = ray.remote(StudyActor)
        for name in names:
            self.handles[name] = actor.options(
                name=name,
                lifetime="detached" if self.detaches else None,
                max_restarts=self.launcher.max_restarts,
                num_cpus=self.launcher.num_cpus,
                num_gpus=self.gpus_per_actor,
            ).remote(asdict(spec), int(name.removeprefix(ACTOR_PREFIX)), share, os.getcwd())
        return names

    def cancel(self) -> list[str]:
        """End the study's actors; their workers end their trials, which the study retries."""
        import ray

        names = self.live()
        for name in names:
            with contextlib.suppress(ValueError):  # it ended by itself meanwhile
                ray.kill(ray.get_actor(name), no_restart=True)
        return names


def connect(address: str | None, namespace: str) -> None:
    """ray.init, after a look at the address: Ray itself retries an address with nothing behind
    it for minutes."""
    try:
        import ray
    except ImportError:
        raise ConfigError('launcher=ray: needs Ray (pip install -e ".[ray]")') from None
    if address not in (None, "auto"):
        probe(address)
    try:
        context = ray.init(
            address=address, namespace=namespace, logging_level=logging.ERROR, log_to_driver=False
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"launcher.address: could not connect to a Ray cluster at {address}"
        raise ConfigError(f"{where}: {first}") from None
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def probe(address: str) -> None:
    """Something answers at `address` (host:port of the GCS, or ray://host[:port])."""
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port or (CLIENT_PORT if parts.scheme == "ray" else 6379)
    except ValueError:
        host, port = None, None
    if not host:
        raise ConfigError(f"launcher.address: expected auto, host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        raise ConfigError(
            f"launcher.address: could not connect to a Ray cluster at {address}: {error.strerror or error}"
        ) from None


def gpus_per_actor(launcher: DictConfig, study_cfg: DictConfig) -> float:
    """launcher.num_gpus, or 1 / study.trials_per_gpu on a cluster with GPUs; refused in one line
    when no node has that many."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    wanted = launcher.num_gpus
    if wanted is None:
        wanted = 1 / study_cfg.trials_per_gpu if most else 0.0
    if wanted > most:
        raise ConfigError(
            f"launcher.num_gpus: expected at most {most:g} (the most GPUs a node of the cluster has), "
            f"got {wanted:g}"
        )
    return wanted


def cluster_is_this_machine() -> bool:
    """Every node of the cluster is this machine (its loopback address reaches them)."""
    import ray

    here = {"127.0.0.1", ray.util.get_node_ip_address()}
    with contextlib.suppress(OSError):
        here.add(socket.gethostbyname(socket.gethostname()))
    return all(node["NodeManagerAddress"] in here for node in ray.nodes() if node.get("Alive"))
