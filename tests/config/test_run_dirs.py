"""Hydra's output folders: one per process, all under runs_dir, also for --multirun."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from study.config import CONFIG_DIR
from study.config.run_dirs import MULTIRUN_DIR, TRAIN_RUN_DIR
from study.training.replay_config import REPLAY_HYDRA_BLOCK


def hydra_dirs(config_name: str) -> tuple[str, str]:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=["runs_dir=out"], return_hydra_config=True)
    return cfg.hydra.run.dir, cfg.hydra.sweep.dir


@pytest.mark.parametrize("config_name", ["train", "sweep"])
def test_every_output_folder_is_under_runs_dir(config_name):
    run_dir, sweep_dir = hydra_dirs(config_name)
    assert run_dir.startswith(f"out/hydra/{config_name}/")
    assert sweep_dir.startswith("out/hydra/multirun/")


def test_the_train_config_and_a_replay_name_their_folders_alike():
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml").hydra)  # unresolved
    assert (raw["run"]["dir"], raw["sweep"]["dir"]) == (TRAIN_RUN_DIR, MULTIRUN_DIR)
    assert REPLAY_HYDRA_BLOCK["hydra"] == {"run": {"dir": TRAIN_RUN_DIR}, "sweep": {"dir": MULTIRUN_DIR}}


def test_processes_in_the_same_second_get_folders_of_their_own():
    """Hydra's ${now:} alone named one folder per second; the process token tells them apart."""
    script = (
        "from tests.config.test_run_dirs import hydra_dirs\n"
        "run_dir, sweep_dir = hydra_dirs('train')\n"
        # the same token in one process (the time before it may tick over a second meanwhile)
        "assert run_dir.rsplit('_', 1)[1] == hydra_dirs('train')[0].rsplit('_', 1)[1]\n"
        "print(run_dir.rsplit('_', 1)[1], sweep_dir.rsplit('_', 1)[1])\n"
    )
    tokens = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert tokens[0] != tokens[1]
