"""A worker's signals, in a real process signalled as a driver, Slurm or a user signals it: a
signal inside a held window (training's end to Optuna's tell) is raised at its release, and
the watchdog still ends a process whose held window never ends; an error raised while the
worker stops (a store call the signal cut) is the interrupt, and a stop that a library
swallowed is raised again at the next epoch end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from study.execution.signals import WorkerSignals

HELD_WORKER = """
import sys, time
from study.execution.signals import WorkerSignals
signals = WorkerSignals(grace_seconds=float(sys.argv[1]))
signals.install()
signals.hold()  # training is over; the run ends and the trial is told next
print("held", flush=True)
try:
    time.sleep(1.5)  # the signal comes in here
except KeyboardInterrupt:
    print("raised too soon", flush=True)
    sys.exit(1)
print("not raised while held", flush=True)
if sys.argv[2] == "release":
    signals.release()  # raises KeyboardInterrupt now
time.sleep(60)  # a tell that hangs on an unreachable store
"""


def held_worker(grace_seconds: float, then: str) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "-c", HELD_WORKER, str(grace_seconds), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "held"
    time.sleep(0.3)
    os.kill(worker.pid, signal.SIGTERM)
    return worker


def test_a_signal_in_a_held_window_is_raised_at_its_release():
    worker = held_worker(grace_seconds=30, then="release")
    try:
        stdout, stderr = worker.communicate(timeout=20)
        assert stdout.splitlines() == ["not raised while held"]
        assert stderr.strip().splitlines()[-1] == "KeyboardInterrupt", stderr
    finally:
        worker.kill()


def test_a_held_window_that_never_ends_still_exits_within_the_grace():
    worker = held_worker(grace_seconds=3, then="hang")
    try:
        started = time.time()
        assert worker.wait(timeout=20) == 130
        assert time.time() - started < 10  # the watchdog started at the signal, not at a release
        assert worker.stdout.read().splitlines() == ["not raised while held"]
    finally:
        worker.kill()


def test_an_error_raised_while_stopping_is_the_interrupt_and_decisions_stay_decisions():
    signals = WorkerSignals()
    cut = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    with pytest.raises(optuna.exceptions.StorageInternalError), signals.stop_kept():
        raise cut  # not stopping: a failure of the trial's
    signals.stopping = True  # the signal came inside the store call that raised
    with pytest.raises(KeyboardInterrupt) as interrupt, signals.stop_kept():
        raise cut
    assert interrupt.value.__cause__ is cut
    with pytest.raises(optuna.TrialPruned), signals.stop_kept(keep=(optuna.TrialPruned,)):
        raise optuna.TrialPruned("pruned after epoch 1")


def test_a_stop_that_a_library_swallowed_is_raised_again_at_the_next_epoch_end():
    from study.execution.objective import TrialObjective

    signals = WorkerSignals()
    signals.stopping = True  # the signal came, its KeyboardInterrupt went into a retried store call
    report = TrialObjective._reporter(trial=None, fence=None, signals=signals)
    with pytest.raises(KeyboardInterrupt):
        report(3, {"val_accuracy": 0.9})
