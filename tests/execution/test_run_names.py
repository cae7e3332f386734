"""A trial's MLflow run is named by what it tries, so the MLflow UI's run list reads as a list
of configurations: `cnn-adam-lr6.9e-3-d0.013`, not `default-trial-0011`."""

from __future__ import annotations

from omegaconf import OmegaConf

from study.config.checks import checked_sweep_config
from study.config.study_schema import ParamSpec
from study.execution.objective import MAX_RUN_NAME, short_value, trial_run_name
from study.search.space import SearchSpace
from tests.helpers import compose_config


def space(entries: dict) -> SearchSpace:
    typed = {name: OmegaConf.merge(OmegaConf.structured(ParamSpec), spec) for name, spec in entries.items()}
    return SearchSpace(typed)


BASE = OmegaConf.create({"model": {"name": "mlp"}, "optimizer": {"name": "sgd"}})


def test_the_default_space_names_runs_by_model_optimizer_and_values():
    default = SearchSpace(checked_sweep_config(compose_config("sweep", [])).search_space)
    sampled = {
        "model": "cnn",
        "optimizer": "adam",
        "optimizer.learning_rate": 0.00685,
        "model.dropout_rate": 0.0134,
    }
    assert trial_run_name(sampled, BASE, default) == "cnn-adam-lr6.9e-3-d0.013"
    # softmax has no dropout: only what the trial sampled is in its name
    sampled = {"model": "softmax", "optimizer": "sgd", "optimizer.learning_rate": 0.31}
    assert trial_run_name(sampled, BASE, default) == "softmax-sgd-lr0.31"


def test_unsearched_groups_come_from_the_base_config_and_other_keys_by_their_initials():
    searched = space(
        {
            "model.hidden1_units": {"type": "int", "low": 8, "high": 64},
            "trainer.epochs": {"type": "int", "low": 1, "high": 9},
            "optimizer.epsilon": {"type": "float", "low": 1e-8, "high": 1e-6, "log": True},
            "optimizer.nesterov": {"type": "categorical", "choices": [True, False]},
        }
    )
    sampled = {
        "model.hidden1_units": 32,
        "trainer.epochs": 3,
        "optimizer.epsilon": 1.234e-7,
        "optimizer.nesterov": True,
    }
    assert trial_run_name(sampled, BASE, searched) == "mlp-sgd-h1u32-e3-eps1.2e-7-ntrue"


def test_keys_that_would_share_a_short_name_are_spelled_out():
    searched = space(
        {
            "model.dense_units": {"type": "int", "low": 8, "high": 64},
            "model.dropout_units": {"type": "int", "low": 8, "high": 64},  # a user's model: du as well
            "model.dropout_rate": {"type": "float", "low": 0.0, "high": 0.5},
        }
    )
    sampled = {"model.dense_units": 16, "model.dropout_units": 8, "model.dropout_rate": 0.25}
    assert trial_run_name(sampled, BASE, searched) == "mlp-sgd-dense_units16-dropout_units8-d0.25"


def test_values_are_short_and_names_fit_the_ui():
    assert [short_value(v) for v in (0.0, 1.0, 0.5, 0.01, 0.00999, 150.0, 64, "relu")] == [
        "0",
        "1",
        "0.5",
        "0.01",
        "1e-2",
        "1.5e2",
        "64",
        "relu",
    ]
    many = space({f"model.width{i}": {"type": "int", "low": 1, "high": 9999} for i in range(30)})
    sampled = {f"model.width{i}": 1234 for i in range(30)}
    assert len(trial_run_name(sampled, BASE, many)) == MAX_RUN_NAME
