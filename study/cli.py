"""Running a `@hydra.main` function as a command whose input errors are one line."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from study.config import ConfigError, describe_error

INPUT_ERRORS = (ConfigError, HydraException, OmegaConfBaseException)


def run_cli(hydra_main: Callable[[], object]) -> None:
    """Run a Hydra entry point; bad input exits with status 2 and one line on stderr.

    Hydra prints multi-line reports (search paths, stack hints) for config errors. With
    HYDRA_FULL_ERROR set it raises instead, and the error becomes one line naming the key or
    file. Other exceptions keep their full traceback. SIGTERM is turned into SystemExit so
    runs in flight end KILLED instead of staying RUNNING.
    """
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    quiet_library_loggers()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        hydra_main()
    except INPUT_ERRORS as error:
        exit_with_input_error(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def quiet_library_loggers() -> None:
    """MLflow's SQL store logs each database error with its traceback and then raises it
    again; the command reports the raised error once, in one line (a full disk, a locked
    file), so the logged copy is noise."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def report_input_errors(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """For the function under @hydra.main: bad input raised inside it exits with one line too
    (Hydra would first print the overrides of the failed job)."""

    @functools.wraps(task_function)
    def wrapper(cfg):
        try:
            return task_function(cfg)
        except INPUT_ERRORS as error:
            exit_with_input_error(error)

    return wrapper


def exit_with_input_error(error: BaseException) -> None:
    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    print(f"study.{program}: error: {describe_error(error)}", file=sys.stderr)
    sys.exit(2)


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signum)
