"""The study storage that waits out a database outage: still Optuna's RDB storage (its cache and
heartbeats), every method that reaches the database retried, and no trial declared dead for a
silence the outage caused."""

from __future__ import annotations

import inspect
import re
import time

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from study.core import retry
from study.core.errors import ConfigError
from study.execution.recovery import fail_ownerless_trials
from study.execution.retrying_storage import RETRIED_METHODS, RetryingRDBStorage
from study.execution.storage import make_storage
from tests.helpers import free_port

pytestmark = pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage is supposed to be used with Study.optimize"
)

STUDY_CFG = {"heartbeat_interval": 1, "max_retry": 1, "store_retry_seconds": 7}
NO_DATABASE = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}


@pytest.fixture(autouse=True)
def default_window():
    yield
    retry.set_window_seconds(retry.DEFAULT_WINDOW_SECONDS)  # make_storage sets it for the process


def storage_at(tmp_path, **cfg) -> RetryingRDBStorage:
    config = OmegaConf.create({**STUDY_CFG, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", **cfg})
    return make_storage(config, f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_every_method_that_reaches_the_database_is_retried():
    abstract = BaseStorage.__abstractmethods__ | BaseHeartbeat.__abstractmethods__
    assert abstract - NO_DATABASE <= set(RETRIED_METHODS)
    # Optuna's cache calls some private methods of the storage it wraps: those too.
    called_by_cache = set(re.findall(r"_backend\.(\w+)\(", inspect.getsource(_CachedStorage)))
    assert called_by_cache - NO_DATABASE <= set(RETRIED_METHODS)
    assert all(getattr(RetryingRDBStorage, name) is not getattr(RDBStorage, name) for name in RETRIED_METHODS)


def test_it_stays_optunas_rdb_storage_with_heartbeats(tmp_path):
    storage = storage_at(tmp_path)
    assert isinstance(storage, RDBStorage) and storage.engine.pool._pre_ping
    study = optuna.create_study(study_name="s", storage=storage)
    assert isinstance(study._storage, _CachedStorage) and is_heartbeat_enabled(study._storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert retry.window_seconds() == 7  # study.store_retry_seconds, for every store of the process


def test_a_trial_another_process_finished_is_still_refused(tmp_path):
    """Only a retry after a cut-off write takes "already finished as asked" for done."""
    storage = storage_at(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])


def test_no_trial_goes_stale_for_a_silence_the_outage_caused(tmp_path):
    storage = storage_at(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    # Past the grace period of 2 x heartbeat_interval; SQLite's clock (CURRENT_TIMESTAMP) counts
    # whole seconds, so a silence of 2.5 s may read as 2.
    time.sleep(3.5)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    storage.store_retry.last_unreachable = time.monotonic()  # a call of this process just waited
    assert storage._get_stale_trial_ids(study._study_id) == []  # nobody could beat meanwhile
    storage.store_retry.last_unreachable = time.monotonic() - storage._catch_up_seconds()
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_trial_asked_just_before_an_outage_keeps_its_worker_until_it_caught_up(tmp_path):
    """Its worker waits out the outage to record itself: a process that looks first must not
    take the trial for one whose worker died between study.ask() and recording itself."""
    storage = storage_at(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()  # no worker recorded yet
    time.sleep(2.5)  # past the grace period, 2 x heartbeat_interval
    cfg = OmegaConf.create({**STUDY_CFG, "storage": storage.url})
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage.store_retry.last_unreachable = time.monotonic()  # a call of this process just waited
    assert fail_ownerless_trials(study, cfg, mlflow_uri) == 0
    storage.store_retry.last_unreachable = time.monotonic() - storage._catch_up_seconds()
    assert fail_ownerless_trials(study, cfg, mlflow_uri) == 1  # still no worker: it died


def test_an_unreachable_postgresql_is_one_line_naming_the_store_and_the_cause(tmp_path):
    url = f"postgresql://study:pw-s3cret@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(ConfigError) as caught:
        storage_at(tmp_path, storage=url)
    line = str(caught.value)
    assert line.startswith(f"study.storage: postgresql://study:***@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "Connection refused" in line and "pw-s3cret" not in line and "\n" not in line
