"""MLflow tracking through `MlflowClient`: one `RunTracker` per run.

The client API (not the fluent one) takes explicit run ids, so parent and child runs of a
study, and several runs in one process, never mix. Metrics go out batched (one `log_batch` per
epoch) from a background thread of the run, so an epoch never waits on the store; `end` waits
for them before the run gets its terminal status.

Why not `log_batch(synchronous=False)`: MLflow's async queue polls with a one-second timeout,
and `set_terminated` joins that thread, so every run ended up to 1 s late, which is twice the
fixed cost a trial of a study may have (bench/README.md).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis
from omegaconf import DictConfig

from study.core.errors import short_error
from study.core.masking import mask_secrets
from study.core.names import ERROR_TAG, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from study.tracking.retrying import RetryingClient, retrying
from study.tracking.store import open_client

log = logging.getLogger(__name__)

# MLflow's limits for one log_batch call and for one value.
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
LOCAL_STORE_SCHEMES = ("sqlite:", "file:")
PACKAGE_DIR = Path(__file__).resolve().parent
# What the experiment is: model training, not GenAI. MLflow 3.17's UI opens an experiment on
# its GenAI pages unless its address says `?workflowType=machine_learning` (the study's summary
# prints such an address); the tag records the kind for MLflow and its other clients.
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'dropout_rate': 0.5}} -> {'model.dropout_rate': 0.5}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def get_or_create_experiment(client: MlflowClient, mlflow_cfg: DictConfig) -> str:
    experiment = client.get_experiment_by_name(mlflow_cfg.experiment_name)
    if experiment is not None:
        if experiment.lifecycle_stage == "active" and EXPERIMENT_KIND_TAG not in experiment.tags:
            # Made before the tag was set, or by hand: a kind the user chose is left alone.
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            mlflow_cfg.experiment_name,
            artifact_location=_artifact_location(mlflow_cfg),
            tags=EXPERIMENT_TAGS,
        )
    except MlflowException as error:
        # Another process created it between our look-up and our create.
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(mlflow_cfg.experiment_name).experiment_id


def _artifact_location(mlflow_cfg: DictConfig) -> str | None:
    location = mlflow_cfg.artifact_location
    if not location:
        return None
    if "://" in location:
        return location
    if not mlflow_cfg.tracking_uri.startswith(LOCAL_STORE_SCHEMES) and "://" in mlflow_cfg.tracking_uri:
        return None  # a tracking server chooses where artifacts go
    return Path(location).resolve().as_uri()


class RunTracker:
    """Logs into one MLflow run and ends it FINISHED, FAILED or KILLED.

    Use it as a context manager: an exception inside the block ends the run FAILED (KILLED
    for Ctrl-C or SystemExit) with the error as the `error` tag, and is re-raised.
    """

    def __init__(self, client: MlflowClient | RetryingClient, run_id: str):
        self.client = retrying(client)  # waits out an outage of the tracking store
        self.run_id = run_id
        self._pending: list[Future] = []
        self._writer: ThreadPoolExecutor | None = None  # started by the first metrics

    @classmethod
    def start(
        cls,
        mlflow_cfg: DictConfig,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunTracker:
        client = retrying(open_client(mlflow_cfg.tracking_uri))
        experiment_id = get_or_create_experiment(client, mlflow_cfg)
        run_tags = resolve_tags(dict(tags or {}))  # user, source, entry point's git commit
        commit = get_git_commit(str(PACKAGE_DIR))  # the code that trains, however it was started
        if commit:
            run_tags[MLFLOW_GIT_COMMIT] = commit
        if parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        masked = {key: mask_secrets(str(value))[:MAX_TAG_LENGTH] for key, value in run_tags.items()}
        # MLflow keeps the name as the run's name and its mlflow.runName tag: masked too.
        name = mask_secrets(run_name) if run_name else None
        run = client.create_run(experiment_id, tags=masked, run_name=name)
        log.info(
            "MLflow run %s (%s) in %s",
            run.info.run_id,
            run.info.run_name,
            mask_secrets(mlflow_cfg.tracking_uri),
        )
        return cls(client, run.info.run_id)

    @classmethod
    def resume(cls, mlflow_cfg: DictConfig, run_id: str) -> RunTracker:
        """Log into a run that a caller created (a sweep creates each trial's run)."""
        client = retrying(open_client(mlflow_cfg.tracking_uri))
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return cls(client, run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(key, mask_secrets(str(value))[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for chunk in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags through log_batch, whose SQL store retries when another process inserts the same
        tag at the same moment (drivers that finish a study together); `set_tag` fails there."""
        entries = [RunTag(key, mask_secrets(str(value))[:MAX_TAG_LENGTH]) for key, value in tags.items()]
        for chunk in _chunks(entries, MAX_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue one batch of metrics; it is written in the background, in order."""
        timestamp = get_current_time_millis()
        entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mlflow-{self.run_id[:8]}")
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._pending.append(self._writer.submit(self._write_metrics, chunk))

    def _write_metrics(self, metrics: list[Metric]) -> None:
        """In the writer thread: one batch of queued metrics."""
        self.client.log_batch(self.run_id, metrics=metrics)

    def may_write(self) -> bool:
        """Is the run still this tracker's to write? (A trial's run stops being its worker's
        once another process took the trial over: `execution.fencing`.)"""
        return True

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        if local_path.is_dir():
            self.client.log_artifacts(self.run_id, str(local_path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def flush(self) -> None:
        """Wait until every queued metric batch is stored (raises if one failed)."""
        pending, self._pending = self._pending, []
        writer, self._writer = self._writer, None
        try:
            for operation in pending:
                operation.result()
        finally:
            if writer is not None:
                writer.shutdown(wait=True)

    def end(self, status: str, error: BaseException | str | None = None) -> None:
        """Flush the metrics, record `error` (a short `error` tag; the traceback as error.txt),
        and give the run its terminal status."""
        try:
            self.flush()
        except Exception as flush_error:  # metrics were lost: the run must not say FINISHED
            if error is None:
                status, error = "FAILED", flush_error
            raise
        finally:
            try:
                if error is not None:
                    self.record_error(error)
            finally:
                self.client.set_terminated(self.run_id, status=status)

    def record_error(self, error: BaseException | str) -> None:
        self.set_tags({ERROR_TAG: short_error(error)})  # masked there
        if isinstance(error, Exception) and error.__traceback__ is not None:
            details = "".join(traceback.format_exception(error))
            self.client.log_text(self.run_id, mask_secrets(details), "error.txt")

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.end(terminal_status(error), error)


def terminal_status(error: BaseException | None) -> str:
    """FINISHED; KILLED when stopped on purpose (Ctrl-C, SIGTERM); else FAILED.

    A pruned trial's run ends FINISHED: pruning is the study's decision, not a failure.
    """
    if error is None or isinstance(error, optuna.TrialPruned):
        return "FINISHED"
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return "KILLED"
    return "FAILED"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
