"""Study storages: trials with no live owner, damaged study files."""

from __future__ import annotations

import datetime
import os
import random
import socket
import subprocess
import sys

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from study.core.errors import ConfigError
from study.core.names import BASELINE_ATTR, MLFLOW_RUN_ATTR, STATE_TAG, TRIAL_NUMBER_TAG, WORKER_ATTR
from study.execution.recovery import fail_interrupted_trial, fail_ownerless_trials, has_no_live_owner
from study.execution.storage import make_storage

STUDY_CFG = OmegaConf.create({"heartbeat_interval": 5, "max_retry": 1, "storage": ""})
X = {"x": optuna.distributions.FloatDistribution(0, 1)}


def dead_pid() -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return done.stdout.strip()


def test_trials_without_a_live_owner_are_failed_and_retried_with_their_params(tmp_path):
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(journal))
    study.enqueue_trial({"x": 0.5}, user_attrs={BASELINE_ATTR: True})
    dead = study.ask(X)  # the enqueued baseline, taken by a worker that died
    dead.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    dead.set_user_attr(MLFLOW_RUN_ATTR, "run-of-the-dead-attempt")
    alive = study.ask(X)
    alive.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    unowned = study.ask(X)  # a worker killed between study.ask() and recording itself
    just_asked = study.ask(X)  # ... or a live one that is about to record itself

    trials = study.get_trials()
    later = datetime.datetime.now().timestamp() + 11  # past the 10 s grace period (2 heartbeats)
    assert [has_no_live_owner(t, 10, now=later) for t in trials] == [True, False, True, True]
    assert not has_no_live_owner(trials[just_asked.number], 10)

    trials[unowned.number].datetime_start -= datetime.timedelta(seconds=30)
    assert fail_ownerless_trials(study, STUDY_CFG, f"sqlite:///{tmp_path}/mlflow.db", trials) == 2

    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[unowned.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    assert trials[just_asked.number].state == TrialState.RUNNING
    retries = {
        RetryHeartbeatStaleTrialCallback.retried_trial_number(t): t
        for t in trials
        if t.state == TrialState.WAITING
    }
    assert set(retries) == {dead.number, unowned.number}
    baseline = retries[dead.number]
    assert baseline.system_attrs["fixed_params"] == trials[dead.number].params  # the same point again
    assert baseline.user_attrs == {BASELINE_ATTR: True}  # still the baseline, without the dead attempt's run
    # A second look finds nothing more to do: a trial is failed and retried once.
    assert fail_ownerless_trials(study, STUDY_CFG, f"sqlite:///{tmp_path}/mlflow.db") == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", r"is empty \(0 bytes\)"), (b"garbage" * 100, "is not an Optuna SQLite database")],
)
def test_a_damaged_sqlite_study_file_is_refused_with_one_line(tmp_path, content, expected):
    database = tmp_path / "optuna.db"
    database.write_bytes(content)  # just now: an empty file is refused whatever its age
    cfg = OmegaConf.create({**STUDY_CFG, "storage": f"sqlite:///{database}"})
    with pytest.raises(ConfigError, match=expected) as caught:
        make_storage(cfg, f"sqlite:///{tmp_path}/mlflow.db")
    assert str(database) in str(caught.value) and "\n" not in str(caught.value)
    assert database.read_bytes() == content  # never replaced


@pytest.mark.parametrize("damage", ["truncated", "random bytes in the middle"])
def test_a_damaged_sqlite_study_file_is_refused_with_one_line_naming_it(tmp_path, damage):
    database = tmp_path / "optuna.db"
    url = f"sqlite:///{database}"
    study = optuna.create_study(study_name="s", storage=url)
    for _ in range(200):
        study.enqueue_trial({"x": 0.1})
    content = database.read_bytes()
    if damage == "truncated":
        database.write_bytes(content[: len(content) // 3])
    else:
        middle = len(content) // 2
        noise = random.Random(0).randbytes(4096)
        database.write_bytes(content[:middle] + noise + content[middle + len(noise) :])
    cfg = OmegaConf.create({**STUDY_CFG, "storage": url})
    with pytest.raises(ConfigError, match="is a damaged Optuna SQLite database") as caught:
        storage = make_storage(cfg, f"sqlite:///{tmp_path}/mlflow.db")
        optuna.load_study(study_name="s", storage=storage).get_trials()
    assert str(database) in str(caught.value) and "\n" not in str(caught.value)


def test_recovery_on_an_in_memory_storage_fails_and_retries_a_dead_workers_trial(tmp_path):
    """The rule needs nothing of a database: Optuna's in-memory storage gets the same recovery."""
    study = optuna.create_study(study_name="memory", storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"x": 0.25})
    orphan = study.ask(X)
    study._storage.set_trial_user_attr(orphan._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    alive = study.ask(X)
    study._storage.set_trial_user_attr(alive._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    cfg = OmegaConf.create({"heartbeat_interval": 5, "max_retry": 1, "storage": ":memory:"})
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the dead attempt has no run to end there
    assert fail_ownerless_trials(study, cfg, tracking_uri) == 1
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.get_trials(deepcopy=False)[2]
    assert retry.params == {"x": 0.25} and WORKER_ATTR not in retry.user_attrs
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == orphan.number


def test_an_interrupt_does_not_spend_the_trials_retries(tmp_path):
    """A baseline interrupted once in each of three sessions (max_retry=1) runs in the fourth:
    an interrupt is no failure of the trial's; a dead worker still spends a retry."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.enqueue_trial({"x": 0.5}, user_attrs={BASELINE_ATTR: True})
    base = OmegaConf.create({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    settings = OmegaConf.create({"study": STUDY_CFG})
    first = None
    for _ in range(3):
        trial = study.ask(X)
        first = trial.number if first is None else first
        fail_interrupted_trial(study, trial, settings, base)
    retry = study.ask(X)
    assert retry.params == {"x": 0.5} and retry.user_attrs == {BASELINE_ATTR: True}
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[retry.number]) == first
    assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[retry.number]) == []

    retry.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")  # then its worker dies
    fail_ownerless_trials(study, STUDY_CFG, base.mlflow.tracking_uri)
    last = study.ask(X)
    assert last.params == {"x": 0.5}
    last.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    fail_ownerless_trials(study, STUDY_CFG, base.mlflow.tracking_uri)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]  # max_retry=1 spent


def test_a_run_its_lost_trial_ended_is_ended_again_as_failed_and_an_earlier_rungs_is_not(tmp_path):
    """A worker stopped between its run's end and Optuna's tell: the trial is failed and retried,
    so its run must not say COMPLETE. A run that an earlier rung's trial ended, which the dead
    promotion never reopened, stays as that trial left it."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("e")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    runs = {}
    for lost, tagged_number in (("own", None), ("earlier-rung", "99")):
        trial = study.ask(X)
        run_id = client.create_run(experiment).info.run_id
        client.set_tag(run_id, TRIAL_NUMBER_TAG, tagged_number or str(trial.number))
        client.set_tag(run_id, STATE_TAG, TrialState.COMPLETE.name)
        client.set_terminated(run_id, "FINISHED")
        trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
        runs[lost] = run_id
    assert fail_ownerless_trials(study, STUDY_CFG, tracking_uri) == 2
    own, earlier = client.get_run(runs["own"]), client.get_run(runs["earlier-rung"])
    assert (own.info.status, own.data.tags[STATE_TAG]) == ("KILLED", "FAIL")
    assert (earlier.info.status, earlier.data.tags[STATE_TAG]) == ("FINISHED", "COMPLETE")
