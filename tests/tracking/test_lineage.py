"""Lineage in MLflow's own terms: a data set logged by runs that start together."""

from __future__ import annotations

import threading

from mlflow import MlflowClient

from study.config.checks import checked_config
from study.tracking.lineage import log_dataset
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
