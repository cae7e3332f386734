"""Study storages: a trial whose worker died, on a storage without heartbeat."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from study.storage import RETRY_OF_ATTR, WORKER_ATTR, fail_orphaned_trials


def test_orphaned_trial_of_a_dead_local_worker_is_failed_and_retried(tmp_path):
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(journal))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    orphan.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead.stdout.strip()}")
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")

    assert fail_orphaned_trials(study, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db") == 1

    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs[RETRY_OF_ATTR] == orphan.number
    assert retry.system_attrs["fixed_params"] == trials[orphan.number].params  # same point again
