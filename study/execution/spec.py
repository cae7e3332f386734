"""What a worker process needs to join its study: the driver writes it, the worker reads it
once and removes it (it may hold credentials)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class WorkerSpec:
    config_dir: str
    config_name: str
    overrides: list[str]
    parent_run_id: str
    worker_index: int = 0
    session_start: float = 0.0  # time.time() when the driver started: failures count from it
    deadline: float | None = None  # time.time() after which no new trial starts
    cores: list[int] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        # Overrides may hold storage or tracking credentials: readable by the owner only.
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text()))
