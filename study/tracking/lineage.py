"""What went into a run and what came out, in MLflow's own terms: the data set as a dataset
input, the model as an MLflow model that serves raw images (study.tracking.packaging),
registered by name, and the machine's load as system metrics. The MLflow UI shows them in its
Dataset, Models and System metrics views.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import platform
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from study.tracking.runs import RunTracker

log = logging.getLogger(__name__)


class Data(Protocol):
    """What a run's data set tells MLflow (study.training.data.Dataset has it)."""

    name: str
    source: str
    digest: str
    x_train: np.ndarray
    y_train: np.ndarray

    @property
    def image_shape(self) -> tuple[int, ...]: ...


# MLflow's SQL stores keep at most 36 characters of a dataset digest; the full one is the
# run's `data.digest` tag, which starts with this.
DATASET_DIGEST_LENGTH = 36

# MLflow logs every start and stop of its monitor at INFO: a line per trial in every log.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


class LibrarySource(DatasetSource):
    """A data set that a library loads by name (keras.datasets.mnist, scikit-learn's digits)."""

    def __init__(self, loader: str):
        self.loader = loader

    @staticmethod
    def _get_source_type() -> str:
        return "library"

    def load(self, **kwargs) -> Any:
        raise NotImplementedError(f"load it with {self.loader}")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # made explicitly, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> LibrarySource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"loader": self.loader}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> LibrarySource:
        return cls(source_dict["loader"])


def dataset_source(source: str) -> DatasetSource:
    """A local folder or file as MLflow's local source; a library loader by its name."""
    if source.startswith("/"):
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that both match.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            return resolve_dataset_source(source)
    return LibrarySource(source)


# How SQLite, PostgreSQL and MySQL say a row with that key exists already.
DUPLICATE_KEY = re.compile(r"UNIQUE constraint failed|duplicate key value|Duplicate entry", re.IGNORECASE)


def log_dataset(client: MlflowClient, run_id: str, dataset: Data) -> None:
    """The run's data set as a dataset input: name, source, digest and the images' shape."""
    schema = Schema(
        [
            TensorSpec(np.dtype(dataset.x_train.dtype), (-1, *dataset.image_shape), "image"),
            TensorSpec(np.dtype(dataset.y_train.dtype), (-1,), "label"),
        ]
    )
    meta = MetaDataset(
        dataset_source(dataset.source),
        name=dataset.name,
        digest=dataset.digest.removeprefix("sha256:")[:DATASET_DIGEST_LENGTH],
        schema=schema,
    )
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    inputs = [DatasetInput(meta._to_mlflow_entity(), tags=[context])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # Runs that start together each insert the experiment's new dataset row; the store keeps
        # one and refuses the others (a unique key). The row exists now: link the run to it.
        if not DUPLICATE_KEY.search(str(error)):
            raise
        client.log_inputs(run_id, datasets=inputs)


def log_keras_model(
    tracking_uri: str,
    run_id: str,
    model,
    images: np.ndarray,
    registered_model: str | None = None,
    version_tags: Mapping[str, str] | None = None,
    model_tags: Mapping[str, str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log a Keras model on a run as the MLflow model that serves raw images (`images`: the
    run's test images, as it trains on them, for the input example), with `model_tags`;
    register it under `registered_model` when given, the version created with `version_tags`.
    Loadable with `mlflow.pyfunc.load_model` and servable with `mlflow models serve`."""
    import keras

    from study.tracking.packaging import log_served_model

    versions = package_versions()
    backend = keras.backend.backend()
    # Named here, the requirements need no inference (a subprocess that loads the model again).
    requirements = [f"keras=={versions['keras']}", f"mlflow=={versions['mlflow']}"]
    if backend in versions:
        requirements.append(f"{backend}=={versions[backend]}")
    info = log_served_model(tracking_uri, run_id, model, images, requirements, model_tags)
    if registered_model:
        version = register_logged_model(tracking_uri, info.model_uri, registered_model, version_tags)
        info.registered_model_version = version.version
    return info


def register_logged_model(
    tracking_uri: str, model_uri: str, registered_model: str, version_tags: Mapping[str, str] | None = None
) -> ModelVersion:
    """A new version of `registered_model` made from the logged model at `model_uri`."""
    mlflow.set_tracking_uri(tracking_uri)  # mlflow.register_model reads the global URI
    # Registered here, not by Model.log: its tags are the version's from its first moment,
    # so another process searching the registry never sees the version without them.
    return mlflow.register_model(
        model_uri, registered_model, await_registration_for=60, tags=dict(version_tags or {})
    )


class _Monitor(SystemMetricsMonitor):
    """MLflow's monitor, counting what it published, and publishing only while `tracker` may
    still write into its run."""

    published = 0
    discarding = False  # the run may have ended: nothing more is recorded

    def __init__(self, tracker: RunTracker, sampling_interval: float, tracking_uri: str):
        super().__init__(tracker.run_id, sampling_interval=sampling_interval, tracking_uri=tracking_uri)
        self.tracker = tracker

    def publish_metrics(self, metrics) -> None:
        # MLflow's own look (is the run RUNNING?) comes before the wait of an interval; a
        # worker stopped in that wait wakes to a run another process ended: look again.
        if self.discarding or not self.tracker.may_write():
            return
        self.publish_unchecked(metrics)

    def publish_unchecked(self, metrics) -> None:
        super().publish_metrics(metrics)
        self.published += 1

    def discard(self) -> None:
        self.discarding = True
        self.mlflow_logger.data = []
        self.finish()


@contextlib.contextmanager
def system_metrics(tracking_uri: str, tracker: RunTracker, interval: float | None) -> Iterator[None]:
    """CPU, memory, disk, network and (with nvidia-ml-py and a GPU) GPU use of the machine,
    sampled every `interval` seconds into the `system/*` metrics of the tracker's run while the
    block runs. A run shorter than one interval still gets the sample taken at its start."""
    if not interval:
        yield
        return
    try:
        monitor = _Monitor(tracker, sampling_interval=interval, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as error:  # psutil missing, say: the run matters more than its charts
        log.warning("system metrics off: %s", error)
        yield
        return
    try:
        yield
    except Exception:
        _stop(monitor)
        raise
    except BaseException:
        # An interrupt, or a trial that another process took over while this one was stopped:
        # its run may have ended already, so the samples not yet written are dropped.
        monitor.discard()
        raise
    _stop(monitor)


def _stop(monitor: _Monitor) -> None:
    if not monitor.tracker.may_write():  # stopped after its last epoch, its trial taken over
        monitor.discard()
        return
    monitor.finish()
    if not monitor.published:
        try:
            monitor.publish_unchecked(monitor.aggregate_metrics())  # asked may_write above: one look
            monitor.mlflow_logger.flush()
        except Exception as error:
            log.warning("system metrics not logged: %s", error)


VERSIONED_PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "numpy", "mlflow", "optuna", "hydra-core")


def package_versions() -> dict[str, str]:
    return dict(_installed_versions())  # a copy: callers may change theirs


@functools.cache  # installed versions do not change while a worker runs its trials
def _installed_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "study": _version("study")}
    for package in VERSIONED_PACKAGES:
        version = _version(package)
        if version:
            versions[package] = version
    return versions


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""
