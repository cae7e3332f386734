"""The execution layer acts on what `search` decides: the driver (`driver`) opens the stores
(`storage`, `parent`), starts and replaces worker processes (`pool`, `spec`), and each worker
(`worker_loop`) runs trials (`objective`, `trial_run`) until the budget says stop, with signals
(`signals`) and dead-trial recovery (`recovery`) keeping every trial and run accounted for."""

from study.execution.driver import StudyIncompleteError, run_sweep
from study.execution.signals import EXIT_CODE, WorkerSignals
from study.execution.spec import WorkerSpec
from study.execution.worker_loop import run_worker

__all__ = ["EXIT_CODE", "StudyIncompleteError", "WorkerSignals", "WorkerSpec", "run_sweep", "run_worker"]
