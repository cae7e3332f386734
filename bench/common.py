"""Shared by the benchmark's scripts: the composed config and the one JSON line they print."""

from __future__ import annotations

import json
import statistics
import sys

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from study.config.checks import checked_config
from study.config.schema import CONFIG_DIR

RESULT_PREFIX = "BENCH_RESULT "  # the line run.py reads back from a script's stdout


def train_config(overrides: list[str]) -> DictConfig:
    """The config `python -m study.train OVERRIDES` would run."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return checked_config(compose("train", overrides=overrides))


def print_result(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"no result line in the output:\n{stdout[-2000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def steady_median(values: list[float]) -> float:
    """The median without the first value when there are several (the first pays warm-up)."""
    return statistics.median(values[1:] if len(values) > 2 else values)


def main_overrides() -> tuple[int, list[str]]:
    """(repeats, overrides) from a script's `[--repeat N] OVERRIDES...`."""
    argv = sys.argv[1:]
    if len(argv) >= 2 and argv[0] == "--repeat":
        return int(argv[1]), argv[2:]
    return 1, argv
