"""Running a `@hydra.main` function as a command whose input errors are one line and whose
output never shows a password."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from study.core.config_files import guard_hydra_config_files
from study.core.errors import ConfigError, describe_error
from study.core.masking import mask_console, mask_files, mask_log_records, mask_secrets, private_files

INPUT_ERRORS = (ConfigError, HydraException, OmegaConfBaseException, yaml.YAMLError)
# A folder that cannot be made where the config points: below a file, not allowed, read-only.
FOLDER_ERRNOS = (errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS)


def run_cli(hydra_main: Callable[[], object], replay_overrides: Sequence[str] = ()) -> None:
    """Run a Hydra entry point; bad input exits with status 2 and one line on stderr.

    Hydra prints multi-line reports (search paths, stack hints) for config errors. With
    HYDRA_FULL_ERROR set it raises instead, and the error becomes one line naming the key or
    file. Other exceptions keep their full traceback. SIGTERM is turned into SystemExit so
    runs in flight end KILLED instead of staying RUNNING (and ends the process regardless
    after SIGTERM_GRACE_SECONDS). Credentials in URLs are masked in everything the command
    prints, tracebacks and Hydra's own lines included. Every config file Hydra reads is
    checked first (see study.core.config_files).
    """
    mask_console()
    private_files()
    sys.argv[1:] = with_replay_overrides(config_paths_from_cwd(sys.argv[1:]), replay_overrides)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    quiet_library_loggers()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    guard_hydra_config_files()
    try:
        hydra_main()
    except INPUT_ERRORS as error:
        exit_with_input_error(error)
    except OSError as error:
        if error.errno not in FOLDER_ERRNOS:
            raise
        exit_with_input_error(error)  # Hydra's output folder cannot be made: runs_dir is a file, read-only
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def config_paths_from_cwd(args: list[str]) -> list[str]:
    """`--config-path runs/replay` as a user means it: relative to the working directory.

    Hydra resolves a relative --config-path against the module's own folder; a folder that
    exists relative to the working directory is made absolute first.
    """
    args = list(args)
    for index, arg in enumerate(args):
        option, _, value = arg.partition("=")
        if option in ("--config-path", "-cp") and value and not os.path.isabs(value) and os.path.isdir(value):
            args[index] = f"{option}={os.path.abspath(value)}"
        elif arg in ("--config-path", "-cp") and index + 1 < len(args):
            value = args[index + 1]
            if not os.path.isabs(value) and os.path.isdir(value):
                args[index + 1] = os.path.abspath(value)
    return args


def with_replay_overrides(args: list[str], overrides: Sequence[str]) -> list[str]:
    """A replay (`--config-path DIR`, a logged config.yaml) gets Hydra's settings (its output
    folder under runs_dir) from the command: the config file is data and sets none of them.
    The user's own overrides of the same keys win."""
    if not any(arg.partition("=")[0] in ("--config-path", "-cp") for arg in args):
        return args
    given = {arg.partition("=")[0] for arg in args}
    return [*args, *(override for override in overrides if override.partition("=")[0] not in given)]


def quiet_library_loggers() -> None:
    """MLflow's SQL store logs each database error with its traceback and then raises it
    again; the command reports the raised error once, in one line (a full disk, a locked
    file), so the logged copy is noise."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A databricks URI without credentials: warned here, then raised (and said once) by MLflow.
    logging.getLogger("mlflow.utils.databricks_utils").setLevel(logging.ERROR)


def report_input_errors(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """For the function under @hydra.main: bad input raised inside it exits with one line too
    (Hydra would first print the overrides of the failed job).

    First of all, the files Hydra has just written for the job (`.hydra/config.yaml`,
    `hydra.yaml`, `overrides.yaml`) and its log file get credentials masked, also when the
    job then fails.
    """

    @functools.wraps(task_function)
    def wrapper(cfg):
        mask_hydra_output()
        try:
            return task_function(cfg)
        except INPUT_ERRORS as error:
            exit_with_input_error(error)

    return wrapper


def mask_hydra_output() -> None:
    """Mask credentials in the job's Hydra output folder and in what its loggers write."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    mask_log_records()
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:
        mask_files(Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # `-m`: Hydra saved the overrides once for all jobs
        mask_files(Path(hydra_cfg.sweep.dir), "multirun.yaml")


def exit_with_input_error(error: BaseException) -> None:
    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    print(f"study.{program}: error: {mask_secrets(describe_error(error))}", file=sys.stderr)
    sys.exit(2)


SIGTERM_GRACE_SECONDS = 20.0


def _exit_on_sigterm(signum, frame, grace_seconds: float = SIGTERM_GRACE_SECONDS) -> None:
    """SystemExit lets a run in flight end KILLED. Library code may swallow it or take long to
    unwind (OmegaConf half-way through building a huge config), so a watchdog thread ends the
    process `grace_seconds` later in any case."""
    watchdog = threading.Timer(grace_seconds, os._exit, args=(128 + signum,))
    watchdog.daemon = True
    watchdog.start()
    signal.signal(signum, _let_clean_up_finish)
    sys.exit(128 + signum)


def _let_clean_up_finish(signum, frame) -> None:
    """A second SIGTERM does not cut the first one's clean-up short; the watchdog bounds it."""


def at_least_zero(kind: type) -> Callable[[str], float]:
    """An argparse type: a finite number >= 0 of `kind` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 <= value < math.inf:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} >= 0, got {text!r}")
        return value

    return parse
