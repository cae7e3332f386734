"""Stores a cluster's workers can reach: a file on this machine's disk, or a server on its
loopback address, is refused in one line before anything is started (the workers on other
machines would fail one by one, each in its own log)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from omegaconf import DictConfig

from study.core.errors import ConfigError
from study.core.masking import mask_secrets

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def check_stores_reachable(
    settings: DictConfig,
    base: DictConfig,
    shared_filesystem: bool,
    this_machine_alone: Callable[[], bool],
) -> None:
    """`shared_filesystem`: the user says every node mounts the stores' files;
    `this_machine_alone()`: the cluster's nodes are this machine (asked only when it matters)."""
    stores = {"study.storage": settings.study.storage, "mlflow.tracking_uri": base.mlflow.tracking_uri}
    for key, value in stores.items():
        if is_file_store(value) and not shared_filesystem:
            raise ConfigError(
                f"{key}: expected a store every node can reach (postgresql://..., "
                f"http://mlflow-host:5000), got a file on this machine ({mask_secrets(value)}); "
                "set launcher.shared_filesystem=true if every node mounts it"
            )
    loopback = [key for key, value in stores.items() if host_of(value) in LOOPBACK_HOSTS]
    if loopback and not this_machine_alone():
        raise ConfigError(
            f"{loopback[0]}: expected a host name the cluster's nodes can reach, got "
            f"{host_of(stores[loopback[0]])} (this machine's loopback address)"
        )


def is_file_store(value: str) -> bool:
    return value.startswith("sqlite:") or "://" not in value


def host_of(value: str) -> str | None:
    return urlsplit(value).hostname if "://" in value else None
