"""How a worker process stops: the first Ctrl-C, SIGTERM or SIGUSR2 stops it, always, within seconds.

- The first signal raises KeyboardInterrupt in the main thread, so the trial's run ends
  KILLED and the worker exits; later signals do not cut that clean-up short.
- A trial's next epoch end raises it again if a library swallowed it (a store call the
  signal cut, then retried): the objective checks `stopping` there.
- It also starts a watchdog: if the process has not exited `EXIT_GRACE_SECONDS` later (the
  interrupt was swallowed by a library callback, or clean-up hangs on an unreachable store),
  the process ends itself. Its trial is then failed and retried by the driver or by any
  other worker, like the trial of a killed worker.
- Inside `stop_kept()`, an error raised once the worker is stopping is the interrupt: a signal
  that lands inside a store call can come out as that call's error (psycopg2 cancels the
  statement, Optuna raises StorageInternalError), and the trial would be failed for good
  instead of retried.
- `hold()`/`release()` mark the lines where a stop would leave the stores disagreeing: from
  `study.ask()` to recording the trial's owner (else a trial without an owner), and from the
  end of training to Optuna's tell (else a run ended COMPLETE beside a trial failed and
  trained again). A signal there is acted on at `release()`; the watchdog starts at once, so
  the process still ends within seconds if the held lines hang on an unreachable store.
"""

from __future__ import annotations

import contextlib
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
        self.stopping = True
        watchdog = threading.Timer(self.grace_seconds, os._exit, args=(EXIT_CODE,))
        watchdog.daemon = True
        watchdog.start()
        if self._deferring:
            self._pending = True  # raised by release()
            return
        raise KeyboardInterrupt

    def hold(self) -> None:
        """Defer the interrupt until `release`: each held window spans functions of Optuna's
        and ours (ask ... owner recorded, training's end ... tell)."""
        self._deferring = True

    def release(self) -> None:
        if not self._deferring:
            return
        self._deferring = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def stop_kept(self, keep: tuple[type[BaseException], ...] = ()):
        """Raise KeyboardInterrupt for an error (other than those in `keep`) raised while
        stopping: the stop, not a fault of the trial's."""
        try:
            yield
        except keep:
            raise
        except Exception as error:
            if self.stopping:
                raise KeyboardInterrupt from error
            raise
