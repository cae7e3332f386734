"""The same training as bench/bare_fit.py, as a tracked `study.train` run.

    python bench/tracked_fit.py model=cnn trainer.epochs=1 data.path=../shared/data/mnist

Timed: the whole `train(cfg)` call, i.e. everything `python -m study.train OVERRIDES` does for
a run (MLflow run, params and tags, seeding, model build, fit with the per-epoch metrics,
TensorBoard events and best checkpoint, last checkpoint, artifacts, the run's end), except the
test-set evaluation, which the bare fit does not do (trials of a study skip it too). Not
timed, as for the bare fit: imports and reading the data; nor opening the MLflow store, which
imports SQLAlchemy and Alembic and checks the schema once per process (about 1 s with a SQLite
store), as a sweep worker does once for all its trials. Prints one result line (JSON).
"""

from __future__ import annotations

import time

import keras
from mlflow import MlflowClient

from study.training.data import load_dataset
from study.training.run import train

from common import main_overrides, print_result, train_config


def main() -> None:
    repeats, overrides = main_overrides()
    cfg = train_config(overrides)
    dataset = load_dataset(cfg.data, cfg.trainer.seed)  # read once, as in a sweep worker
    MlflowClient(tracking_uri=cfg.mlflow.tracking_uri).search_experiments(max_results=1)  # open the store
    seconds, metrics = [], {}
    for _ in range(repeats):
        keras.backend.clear_session()
        start = time.perf_counter()
        metrics = train(cfg, evaluate_test=False)
        seconds.append(time.perf_counter() - start)
    print_result(
        {
            "seconds": seconds,
            "fit_seconds": metrics["train_seconds"],
            "val_accuracy": metrics["val_accuracy"],
            "train_examples": len(dataset.x_train),
            "epochs": cfg.trainer.epochs,
        }
    )


if __name__ == "__main__":
    main()
