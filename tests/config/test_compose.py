"""Composing a trial's config: the user's overrides, then the sampled values, which win."""

from __future__ import annotations

import pytest

from study.config.compose import is_value_override, merge_overrides, sweep_composer
from study.config.schema import CONFIG_DIR


@pytest.mark.parametrize(
    ("override", "is_value"),
    [
        ("optimizer.learning_rate=0.1", True),
        ("model=cnn", False),  # a group choice
        ("+mlflow.tags.team=vision", False),  # an addition goes through Hydra's compose
        ("~trainer.max_steps", False),
        ("hydra.searchpath=[file:///x]", True),
        ("search_space@x=y", False),
    ],
)
def test_a_value_override_is_a_dotted_key_without_group_syntax(override, is_value):
    assert is_value_override(override) is is_value


def test_sampled_values_win_over_the_command_line_and_keep_its_order():
    base = ["model=mlp", "optimizer.learning_rate=0.5", "+mlflow.tags.team=vision", "data=digits"]
    extra = ["optimizer.learning_rate=0.01", "model=cnn"]
    assert merge_overrides(base, extra) == [
        "+mlflow.tags.team=vision",
        "data=digits",
        "optimizer.learning_rate=0.01",
        "model=cnn",
    ]


def test_the_composer_applies_groups_then_values_as_hydra_does():
    compose_with = sweep_composer(str(CONFIG_DIR), "sweep", ["data=digits", "optimizer.learning_rate=0.5"])
    assert compose_with([]).optimizer.learning_rate == 0.5
    sampled = compose_with(["optimizer=sgd", "optimizer.learning_rate=0.01", "model.dropout_rate=0.25"])
    assert sampled.optimizer.name == "sgd" and sampled.optimizer.learning_rate == 0.01
    assert sampled.model.dropout_rate == 0.25 and sampled.data.name == "digits"
