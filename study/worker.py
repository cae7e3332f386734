"""`python -m study.worker SPEC.json`: a study worker process, started by `study.sweep`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import optuna

from study.core.cli import quiet_library_loggers
from study.core.masking import mask_console, private_files
from study.execution import EXIT_CODE, WorkerSignals, WorkerSpec, run_worker

log = logging.getLogger("study.worker")


def main() -> None:
    mask_console()  # its log file shows no password, also in MLflow's or SQLAlchemy's errors
    private_files()  # a worker started by hand (not by study.sweep) too
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    # Optuna would log every failed trial with a traceback, expected ones ("not needed",
    # interrupted) too; the objective logs one line per outcome itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_library_loggers()
    signals = WorkerSignals()
    signals.install()
    spec_file = Path(sys.argv[1])
    spec = WorkerSpec.read(spec_file)
    spec_file.unlink(missing_ok=True)  # it may hold credentials: read once, then gone
    try:
        sys.exit(run_worker(spec, signals))
    except KeyboardInterrupt:
        # Interrupts reach SQLAlchemy's pool while connections are returned; not errors.
        logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
        log.info("interrupted: exiting")
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    main()
