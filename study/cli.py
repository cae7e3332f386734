"""Running a `@hydra.main` function as a command whose input errors are one line."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

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
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    try:
        hydra_main()
    except INPUT_ERRORS as error:
        print(f"study.{program}: error: {describe_error(error)}", file=sys.stderr)
        sys.exit(2)


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signum)
