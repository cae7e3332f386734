"""Drivers that start together on a new Optuna SQLite file all open it: one makes the tables."""

from __future__ import annotations

import multiprocessing
import time

from omegaconf import OmegaConf

DRIVERS = 5


def open_study(url: str, start_at: float) -> str:
    import optuna

    from study.execution.storage import make_storage

    cfg = OmegaConf.create({"storage": url, "max_retry": 1, "heartbeat_interval": 5})
    time.sleep(max(0.0, start_at - time.time()))  # every process past its imports: a real race
    try:
        storage = make_storage(cfg, "sqlite:///unused-mlflow.db")
        optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "opened"


def test_drivers_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    start_at = time.time() + 8  # the spawned processes import Optuna and MLflow first
    with multiprocessing.get_context("spawn").Pool(DRIVERS) as pool:
        results = pool.starmap(open_study, [(url, start_at)] * DRIVERS)
    assert results == ["opened"] * DRIVERS
