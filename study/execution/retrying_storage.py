"""Optuna's RDB storage, whose calls wait out an outage of the database (study.core.retry).

It stays an `RDBStorage`: Optuna wraps it in its cache and runs heartbeats only for one. Every
method that reaches the database retries a refused or dropped connection for the window; the
outermost call retries the whole, so methods calling one another do not multiply the window.

A write cut off by the outage may have been committed all the same. Its retry is harmless for
attributes, parameters, intermediate values and heartbeats (Optuna overwrites them, or ignores
the duplicate); a trial's end is recognised (`set_trial_state_values`); a new trial may then
exist twice, and the extra one, with no worker recorded, is failed by `recovery`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from study.core.retry import MAX_DELAY_SECONDS, store_retry

STORE_KEY = "study.storage"
# BaseStorage's and the heartbeat's methods that query the database, and the private ones
# Optuna's cache (_CachedStorage) calls on the storage it wraps.
RETRIED_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


class RetryingRDBStorage(RDBStorage):
    def __init__(self, url: str, **kwargs):
        self.store_retry = store_retry(STORE_KEY, url)
        super().__init__(url, **kwargs)  # opening the store is not retried: bad input fails fast

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """A write cut off by the outage may have been committed all the same: a retry that
        finds the trial finished exactly as asked was that write."""
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries > 1 and self._finished_as(trial_id, state, values):
                    return True
                raise

        return self.store_retry.call(attempt)

    def _finished_as(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        trial = RDBStorage.get_trial(self, trial_id)
        return trial.state == state and (values is None or trial.values == list(values))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """While the database was down no worker could record a heartbeat: silence then says
        nothing of a worker. Trials go stale again once every worker had the time to catch up."""
        stale = self.store_retry.call(RDBStorage._get_stale_trial_ids, self, study_id)
        return [] if self.catching_up() else stale

    def catching_up(self) -> bool:
        """Whether this process found the database down so recently that a live worker may not
        have written since: until then, what a worker has not written says nothing of it."""
        return self.store_retry.unreachable_within(self._catch_up_seconds())

    def _catch_up_seconds(self) -> float:
        interval = self.heartbeat_interval or 0
        return (self.grace_period or 2 * interval) + interval + MAX_DELAY_SECONDS


def _retried(method):
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args, **kwargs):
        return self.store_retry.call(method, self, *args, **kwargs)

    return call


for _name in RETRIED_METHODS:
    if _name not in RetryingRDBStorage.__dict__:  # the two above retry in their own way
        setattr(RetryingRDBStorage, _name, _retried(getattr(RDBStorage, _name)))
