"""How a worker process stops: the first Ctrl-C, SIGTERM or SIGUSR2 stops it, always, within seconds.

- The first signal raises KeyboardInterrupt in the main thread, so the trial's run ends
  KILLED and the worker exits; later signals do not cut that clean-up short.
- It also starts a watchdog: if the process has not exited `EXIT_GRACE_SECONDS` later (the
  interrupt was swallowed by a library callback, or clean-up hangs on an unreachable store),
  the process ends itself. Its trial is then failed and retried by the driver or by any
  other worker, like the trial of a killed worker.
- `hold()`/`release()` mark the few lines between `study.ask()` and recording the trial's owner:
  a signal there is acted on right after them, so no trial exists without an owner.
"""

from __future__ import annotations

import os
import signal
import threading

EXIT_GRACE_SECONDS = 15.0
EXIT_CODE = 130


class WorkerSignals:
    def __init__(self, grace_seconds: float = EXIT_GRACE_SECONDS):
        self.grace_seconds = grace_seconds
        self.stopping = False
        self._deferring = False
        self._pending = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        # Slurm's warning before a task's time limit (submitit asks for it): stop as for SIGTERM.
        signal.signal(signal.SIGUSR2, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.stopping:
            return  # already stopping: let the clean-up finish (the watchdog bounds it)
        if self._deferring:
            self._pending = True
            return
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        watchdog = threading.Timer(self.grace_seconds, os._exit, args=(EXIT_CODE,))
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    def hold(self) -> None:
        """Defer signals until `release`: the window from `study.ask()` (inside Optuna's
        optimize) to the objective recording the trial's owner spans two functions."""
        self._deferring = True

    def release(self) -> None:
        if not self._deferring:
            return
        self._deferring = False
        if self._pending and not self.stopping:
            self._pending = False
            self._stop()
