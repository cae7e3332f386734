"""Which process owns something a store records (a trial, a model being logged), and whether
that process is gone, as far as this machine can tell."""

from __future__ import annotations

import os
import socket


def process_identity() -> str:
    """`host:pid` of this process, as stored on what it owns."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gone_from_this_machine(identity: str) -> bool:
    """True when `identity` is a process of this machine that no longer runs; False when it
    runs, or belongs to another machine (its heartbeat or its age must tell)."""
    host, _, pid = identity.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def of_this_machine(identity: str) -> bool:
    host, _, pid = identity.rpartition(":")
    return host == socket.gethostname() and pid.isdigit()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
