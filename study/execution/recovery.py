"""What happens to trials whose worker is gone, and to their MLflow runs.

A trial is safe from the moment it exists. A RUNNING trial with no live owner is failed and
retried with the same parameters and user attributes (the enqueued baseline stays the
baseline) by whichever process notices first: a driver starting or polling, or a worker
between trials. "No live owner" is any of:
- its heartbeat went stale (Optuna's own check, RDB storages; any host): a worker that is
  alive but silent (stopped, swapping, cut off) loses its trial after 2 x
  study.heartbeat_interval, and finds out when it wakes (`fencing`);
- its worker (`host:pid`, recorded right after the trial is asked for) was on this machine
  and that process is gone;
- it has no worker recorded and started more than a grace period ago: its process died
  between `study.ask()` and the first thing the objective does. Not while the store is
  catching up on an outage: the worker may still be waiting to record itself.
The storage decides atomically which process fails a trial, so a trial is retried once. The
dead attempt's MLflow run is ended KILLED with `optuna.trial.state=FAIL`; a run left RUNNING
by a worker that died before recording it is found by its tags and ended too.
"""

from __future__ import annotations

import copy
import logging
import time

import optuna
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from study.core.names import (
    ATTEMPT_ATTRS,
    CONFIRMATION_DRIVER_TAG,
    CONFIRMATION_OF_TAG,
    FAIL_REASON_ATTR,
    MLFLOW_RUN_ATTR,
    PARENT_RUN_ATTR,
    RETRY_FAILED_TRIAL_ATTR,
    STATE_TAG,
    TRIAL_NUMBER_TAG,
    WORKER_ATTR,
)
from study.core.processes import gone_from_this_machine
from study.execution.retrying_storage import RetryingRDBStorage
from study.tracking.runs import RunTracker

log = logging.getLogger(__name__)


def grace_period(study_cfg: DictConfig) -> float:
    """Seconds after which a silent trial has no live owner."""
    return 2 * study_cfg.heartbeat_interval


class RetryWithSameParams:
    """Optuna's retry of a failed trial, less the attributes of the failed attempt.

    RetryHeartbeatStaleTrialCallback copies the user attributes: the new trial would otherwise
    start with the dead worker's pid and MLflow run, and look dead itself. It also ends the
    dead attempt's MLflow run (KILLED, state FAIL).
    """

    def __init__(self, tracking_uri: str, max_retry: int, counted: bool = True):
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=False)
        self.counted = counted  # False: an interrupt is no failure of the trial's

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attempt = copy.deepcopy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        # First: an unreachable tracking server must not cost the retry.
        if self.counted:
            self.retry(study, attempt)
        else:
            requeue_uncounted(study, attempt)
        end_runs_of_dead_trial(self.tracking_uri, study, trial)


def requeue_uncounted(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial again as Optuna's retry callback does (same parameters, `failed_trial`
    pointing back), without adding to its retry history: study.max_retry is not spent."""
    system_attrs = {RETRY_FAILED_TRIAL_ATTR: trial.number, **trial.system_attrs}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


def end_runs_of_dead_trial(tracking_uri: str, study: optuna.Study, trial: FrozenTrial) -> None:
    """End the MLflow run of a trial whose worker is gone: the one it recorded, and any run
    started for it before the worker could record it (found by its tags)."""
    reason = "worker gone (killed, crashed or stopped); the trial is failed and retried"
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        run_ids = {trial.user_attrs.get(MLFLOW_RUN_ATTR)} - {None}
        run_ids |= set(running_runs_of_trial(client, study, trial.number))
        for run_id in run_ids:
            end_abandoned_run(client, run_id, TrialState.FAIL, reason, failed_trial=trial.number)
    except Exception as error:  # the retry matters more than the run's status
        log.warning("could not end the MLflow run of dead trial %d: %s", trial.number, error)


def running_runs_of_trial(client: MlflowClient, study: optuna.Study, number: int) -> list[str]:
    parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_id:
        return []
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{TRIAL_NUMBER_TAG}` = '{number}' "
            "and attributes.status = 'RUNNING'"
        ),
    )
    return [run.info.run_id for run in runs]


def has_no_live_owner(
    trial: FrozenTrial, grace_seconds: float, now: float | None = None, catching_up: bool = False
) -> bool:
    """A RUNNING trial whose worker is gone, as far as this machine can tell (see the module
    docstring); a stale heartbeat is Optuna's own check. `catching_up`: the store was down
    just now, so no worker could record itself."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = trial.user_attrs.get(WORKER_ATTR)
    if owner is None:
        if catching_up:
            return False
        now = time.time() if now is None else now
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace_seconds
    return gone_from_this_machine(owner)


def fail_ownerless_trials(
    study: optuna.Study,
    study_cfg: DictConfig,
    tracking_uri: str,
    trials: list[FrozenTrial] | None = None,
) -> int:
    """Fail and retry every RUNNING trial with no live owner; returns how many this process
    failed (another process may win the race for some)."""
    # Stale heartbeats, on any host: Optuna's check (it sees through its cache wrapper, and
    # does nothing on a storage without heartbeats), then our retry callback.
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trials is None else trials
    grace = grace_period(study_cfg)
    catching_up = store_catching_up(study)
    failed = 0
    for trial in trials:
        if has_no_live_owner(trial, grace, catching_up=catching_up) and fail_and_retry(
            study, trial, "its worker is gone", study_cfg, tracking_uri
        ):
            log.warning("trial %d: its worker is gone; failed and retried", trial.number)
            failed += 1
    return failed


def store_catching_up(study: optuna.Study) -> bool:
    """Whether the study's database was down so recently that workers may not have caught up
    (`RetryingRDBStorage.catching_up`; other storages have no outages to wait out)."""
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    return isinstance(storage, RetryingRDBStorage) and storage.catching_up()


def fail_and_retry(
    study: optuna.Study,
    trial: FrozenTrial,
    reason: str,
    study_cfg: DictConfig,
    tracking_uri: str,
    counted: bool = True,
) -> bool:
    """Fail a RUNNING trial and queue its retry; False if another process finished it first."""
    if not fail_trial(study, trial, reason):
        return False
    retry = RetryWithSameParams(tracking_uri, study_cfg.max_retry, counted)
    retry(study, study._storage.get_trial(trial._trial_id))
    return True


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with a reason; False if another process finished it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def end_abandoned_run(
    client: MlflowClient, run_id: str, state: TrialState, reason: str, failed_trial: int | None = None
) -> bool:
    """End the run of a trial whose worker is gone, unless it already ended; True if it did.
    A run that `failed_trial` itself ended is ended again as failed: its worker was lost
    between the run's end and Optuna's tell (stopped, cut off), so the trial is retried."""
    run = client.get_run(run_id)
    if run.info.status not in ("RUNNING", "SCHEDULED") and not ended_by_lost_trial(run, failed_trial):
        return False
    tracker = RunTracker(client, run_id)
    tracker.set_tags({STATE_TAG: state.name})
    tracker.end("KILLED", reason)
    return True


def ended_by_lost_trial(run, failed_trial: int | None) -> bool:
    """The run ended, by the failed trial (not by an earlier rung's trial whose run a promotion
    reuses), with a state the trial no longer has."""
    return (
        failed_trial is not None
        and run.data.tags.get(TRIAL_NUMBER_TAG) == str(failed_trial)
        and run.data.tags.get(STATE_TAG) != TrialState.FAIL.name
    )


def end_orphaned_runs(study: optuna.Study, parent: RunTracker) -> int:
    """End every child run still RUNNING whose trial is not: a worker died between starting
    the run and recording it on the trial, or could not end it (store unreachable)."""
    client = parent.client
    states = {str(trial.number): trial.state for trial in study.get_trials(deepcopy=False)}
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    ended = 0
    for run in runs:
        if CONFIRMATION_OF_TAG in run.data.tags:  # a confirmation's seed: its driver ends it, unless gone
            if gone_from_this_machine(run.data.tags.get(CONFIRMATION_DRIVER_TAG, "")):
                RunTracker(client, run.info.run_id).end("KILLED", "its driver is gone")
                ended += 1
            continue
        state = states.get(run.data.tags.get(TRIAL_NUMBER_TAG, ""), TrialState.FAIL)
        if state != TrialState.RUNNING:
            final = state if state.is_finished() else TrialState.FAIL
            ended += end_abandoned_run(client, run.info.run_id, final, "its worker is gone")
    return ended


def fail_interrupted_trial(study: optuna.Study, trial: optuna.Trial | None, settings, base) -> None:
    """The trial this worker was running when told to stop: failed and retried at once (its
    run already ended KILLED), so the next session runs it again. An interrupt is no fault of
    the trial's: the retry does not count against study.max_retry."""
    if trial is None:
        return
    frozen = study._storage.get_trial(trial._trial_id)
    tracking_uri = base.mlflow.tracking_uri
    if frozen.state == TrialState.RUNNING:
        reason = "interrupted (Ctrl-C, SIGTERM or SIGUSR2)"
        fail_and_retry(study, frozen, reason, settings.study, tracking_uri, counted=False)
    elif frozen.state == TrialState.FAIL and FAIL_REASON_ATTR not in frozen.user_attrs:
        # Optuna failed it when the interrupt came between its own lines: retry it all the same.
        RetryWithSameParams(tracking_uri, settings.study.max_retry, counted=False)(study, frozen)
