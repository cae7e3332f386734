"""The one way a config is trained again with other seeds, shared by `study.reproduce --seeds`
and a study's confirmation: which seeds, in which order, and the mean and std of the scores."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from study.training.replay import SeedRun, mean_and_std, other_seeds, train_seeds


def test_other_seeds_follow_the_configs_seed():
    cfg = OmegaConf.create({"trainer": {"seed": 42}})
    assert other_seeds(cfg, 3) == [43, 44, 45]
    assert other_seeds(cfg, 0) == []


def test_each_seed_is_trained_with_its_seed_in_the_config_and_the_original_left_alone():
    cfg = OmegaConf.create({"trainer": {"seed": 42, "epochs": 2}})
    trained = []

    def train_one(seeded, seed):
        trained.append((seeded.trainer.seed, seeded.trainer.epochs, seed))
        return f"run-{seed}", {"best_val_accuracy": seed / 100}

    runs = train_seeds(cfg, [44, 43], train_one)
    assert trained == [(44, 2, 44), (43, 2, 43)]
    assert runs == [
        SeedRun(44, "run-44", {"best_val_accuracy": 0.44}),
        SeedRun(43, "run-43", {"best_val_accuracy": 0.43}),
    ]
    assert cfg.trainer.seed == 42


def test_mean_and_sample_std():
    mean, std = mean_and_std([0.97, 0.96, 0.98])
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.01)
    assert mean_and_std([0.5]) == (0.5, 0.0)
