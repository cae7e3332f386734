"""Lineage in MLflow's own terms: a data set logged by runs that start together, and the
machine's system metrics, written only while the run is still the writer's."""

from __future__ import annotations

import threading
import time

from mlflow import MlflowClient

from study.config.checks import checked_config
from study.tracking.lineage import log_dataset, system_metrics
from study.tracking.runs import RunTracker
from study.training.data import load_dataset


def test_runs_that_start_together_all_get_the_experiments_new_dataset(make_config, tmp_path):
    """Each run inserts the experiment's new dataset row; the store keeps one and refuses the
    others (CI: a trial failed on PostgreSQL's `dataset_pk`). Every run gets its input."""
    cfg = checked_config(make_config())
    dataset = load_dataset(cfg.data, cfg.trainer.seed)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("together")
    runs = [client.create_run(experiment).info.run_id for _ in range(8)]
    start, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        start.wait()
        try:
            log_dataset(client, run_id, dataset)
        except Exception as error:  # collected: the assertion below names it
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run_id in runs:
        assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == [dataset.name]


class TakenOverTracker(RunTracker):
    """The tracker of a trial that another process took over while its worker was stopped."""

    writable = True

    def may_write(self) -> bool:
        return self.writable


def test_system_metrics_are_sampled_into_the_run_and_dropped_once_it_is_taken_over(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("system")
    kept, taken = (TakenOverTracker(client, client.create_run(experiment).info.run_id) for _ in range(2))
    with system_metrics(uri, kept, interval=0.05):
        time.sleep(0.3)
    kept_metrics = client.get_run(kept.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(kept_metrics)
    # Shorter than an interval: only the sample of its end would be written, and it is not.
    with system_metrics(uri, taken, interval=10):
        taken.writable = False
    assert not client.get_run(taken.run_id).data.metrics
