"""The tracking layer: MLflow runs through the client API (`runs`), the store checked before
anything is written (`store.check_tracking_store`), lineage in MLflow's own terms (`lineage`:
dataset inputs, logged models, system metrics), TensorBoard event files (`tensorboard`), and
clients that wait out an outage of the tracking store (`retrying`)."""

from study.tracking.runs import (
    RunTracker,
    flatten,
    get_or_create_experiment,
    terminal_status,
)
from study.tracking.store import check_readable, check_tracking_store, missing_local_store

__all__ = [
    "RunTracker",
    "check_readable",
    "check_tracking_store",
    "flatten",
    "get_or_create_experiment",
    "missing_local_store",
    "terminal_status",
]
