"""The search space: structure checks, conditional sampling, baseline values, overrides."""

from __future__ import annotations

import optuna
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from study.config.checks import checked_config, checked_sweep_config
from study.config.compose import is_value_override, merge_overrides, sweep_composer
from study.config.schema import CONFIG_DIR
from study.config.study_schema import ParamSpec
from study.core.errors import ConfigError, describe_error
from study.search.space import SearchSpace, as_override_value, as_overrides
from tests.helpers import compose_config


def space(entries: dict) -> SearchSpace:
    typed = {name: OmegaConf.merge(OmegaConf.structured(ParamSpec), spec) for name, spec in entries.items()}
    return SearchSpace(typed)


def default_space_and_base():
    cfg = compose_config("sweep", [])
    return SearchSpace(checked_sweep_config(cfg).search_space), checked_config(cfg)


def test_conditional_entries_follow_the_sampled_group():
    search, base = default_space_and_base()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        sampled = search.sample(trial, base)
        seen.add((sampled["model"], sampled["optimizer"]))
        assert ("model.dropout_rate" in sampled) == (sampled["model"] in ("mlp", "cnn"))
        low, high = (1e-3, 1.0) if sampled["optimizer"] == "sgd" else (1e-4, 1e-2)
        assert low <= sampled["optimizer.learning_rate"] <= high
        assert ("sgd_learning_rate" in trial.params) == (sampled["optimizer"] == "sgd")
        study.tell(trial, 0.5)
    assert len(seen) == 9  # every model with every optimizer


def test_base_values_make_the_baseline_trial():
    search, base = default_space_and_base()
    assert search.base_values(base) == {
        "model": "cnn",
        "optimizer": "adam",
        "adaptive_learning_rate": 0.001,
        "model.dropout_rate": 0.5,
    }


def test_sampled_values_become_hydra_overrides():
    assert as_overrides({"model": "cnn", "optimizer.learning_rate": 1e-05, "model.dense_units": 512}) == [
        "model=cnn",
        "optimizer.learning_rate=1e-05",
        "model.dense_units=512",
    ]
    assert as_override_value(True) == "true"
    assert as_override_value("has space") == "'has space'"
    cfg = compose_config("train", as_overrides({"model": "mlp", "model.dropout_rate": 0.25}))
    assert cfg.model.dropout_rate == 0.25


SELF = {"when": {"model.dropout_rate": [0.1]}}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"model": {"type": "categorical", "choices": []}}, "model.choices: expected a non-empty"),
        ({"x": {"type": "float", "low": 1.0}}, "search_space.x: a float entry needs low and high"),
        ({"x": {"type": "int", "low": 1, "high": 9, "step": 0}}, "search_space.x.step: expected > 0"),
        ({"model": {"type": "float", "low": 0, "high": 1}}, "search_space.model: a config group (model) is"),
        (
            {
                "model.dropout_rate": {"type": "float", "low": 0, "high": 0.5, "when": {"model": ["cnn"]}},
                "model": {"type": "categorical", "choices": ["cnn"]},
            },
            "search_space.model.dropout_rate.when: model is searched after this entry",
        ),
        (
            {"mlflow.tracking_uri": {"type": "categorical", "choices": ["sqlite:///a.db"]}},
            "search_space.mlflow.tracking_uri: mlflow.tracking_uri cannot be searched",
        ),
        (
            {"study.n_trials": {"type": "int", "low": 1, "high": 5}},
            "search_space.study.n_trials: study.n_trials cannot be searched",
        ),
        (
            {"x": {"type": "float", "low": 0.0, "high": 0.5, "target": "model.dropout_rate"} | SELF},
            "search_space.x.when.model.dropout_rate: an entry cannot depend on its own value",
        ),
        (
            {"x": {"type": "float", "low": 0.0, "high": float("inf"), "target": "model.dropout_rate"}},
            "search_space.x: expected finite low and high, got 0.0, inf",
        ),
    ],
)
def test_malformed_entries_are_named(entries, expected):
    with pytest.raises(ConfigError) as caught:
        space(entries)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"modle": ["mlp"]}, "search_space.x.when.modle: 'modle' is not a key of the config"),
        ({"model": ["mlpp"]}, "search_space.x.when.model: model never takes ['mlpp']; it takes softmax, mlp"),
        (
            {"optimizer": ["sdg"]},
            "search_space.x.when.optimizer: optimizer never takes ['sdg']; it takes adam,",
        ),
        (
            {"trainer.epoch": [1]},
            "search_space.x.when.trainer.epoch: 'trainer.epoch' is not a key of the config",
        ),
        ({"model.units": [3]}, "search_space.x.when.model.units: 'model.units' is not a key of the config"),
        (
            {"trainer.epochs": ["three"]},
            "search_space.x.when.trainer.epochs: trainer.epochs never takes ['three']; it takes values like",
        ),
    ],
)
def test_conditions_that_can_never_hold_are_named(when, expected):
    """An entry whose `when` names an unknown key or option would silently never be sampled."""
    search = space(
        {
            "model": {"type": "categorical", "choices": ["softmax", "mlp"]},
            "x": {"type": "float", "low": 0.0, "high": 0.5, "when": when, "target": "model.dropout_rate"},
        }
    )
    with pytest.raises(ConfigError) as caught:
        search.check_conditions(compose_config("sweep", []))
    assert str(caught.value).startswith(expected)


def test_conditions_on_config_keys_and_searched_values_are_accepted():
    search = space(
        {
            "model": {"type": "categorical", "choices": ["softmax", "mlp"]},
            "x": {
                "type": "float",
                "low": 0.0,
                "high": 0.5,
                "target": "model.dropout_rate",
                "when": {"model": ["mlp"], "trainer.epochs": [2], "data": ["mnist"]},
            },
        }
    )
    search.check_conditions(compose_config("sweep", []))


def test_an_unknown_field_of_an_entry_is_named(tmp_path):
    (tmp_path / "search_space").mkdir()
    (tmp_path / "search_space" / "typo.yaml").write_text(
        "optimizer.learning_rate: {type: float, lo: 0.001}\n"
    )
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config("sweep", [f"hydra.searchpath=[file://{tmp_path}]", "search_space=typo"])
    assert describe_error(caught.value) == (
        "search_space.optimizer.learning_rate.lo: Key 'lo' not in 'ParamSpec'"
    )


def test_grid_needs_discrete_values():
    search = space(
        {
            "model.dense_units": {"type": "int", "low": 256, "high": 1024, "step": 256},
            "optimizer.learning_rate": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
        }
    )
    grid = search.grid()
    assert grid["model.dense_units"] == [256, 512, 768, 1024]
    assert grid["optimizer.learning_rate"] == pytest.approx([0.1, 0.2, 0.3])


COMMAND_LINE = ["data=digits", "trainer.epochs=1", "optimizer.learning_rate=0.5"]


@pytest.mark.parametrize(
    "sampled",
    [
        [],
        ["optimizer.learning_rate=0.001"],  # beats the command line's value
        ["model=mlp", "optimizer=sgd", "optimizer.learning_rate=0.01", "model.dropout_rate=0.25"],
        ["model=cnn", "model.dense_units=256", "optimizer=rmsprop"],
    ],
)
def test_worker_compose_equals_a_full_hydra_compose(sampled):
    """Workers compose once per group choice and set sampled values on a copy: same config."""
    compose_with = sweep_composer(str(CONFIG_DIR), "sweep", COMMAND_LINE)
    expected = compose_config("sweep", merge_overrides(COMMAND_LINE, sampled))
    for _ in range(2):  # the second time from the cache
        cfg = compose_with(sampled)
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected)
        assert checked_config(cfg) == checked_config(expected)


def test_worker_compose_does_not_leak_values_between_trials():
    compose_with = sweep_composer(str(CONFIG_DIR), "sweep", COMMAND_LINE)
    first = compose_with(["model=mlp", "model.dropout_rate=0.25"])
    first.model.hidden1_units = 7  # a trial's config is its own
    second = compose_with(["model=mlp"])
    assert second.model.dropout_rate == compose_config("sweep", ["model=mlp"]).model.dropout_rate
    assert second.model.hidden1_units != 7


@pytest.mark.parametrize(
    ("override", "cause", "described"),
    [
        ("model.hidden1_units=wide", ValidationError, "model.hidden1_units: Value 'wide' of type 'str'"),
        ("model.hidden_units=8", ConfigAttributeError, "model.hidden_units: Key 'hidden_units' not in"),
    ],
)
def test_worker_compose_rejects_bad_values_as_hydra_does(override, cause, described):
    compose_with = sweep_composer(str(CONFIG_DIR), "sweep", COMMAND_LINE)
    for composer in (compose_with, lambda extra: compose_config("sweep", [*COMMAND_LINE, *extra])):
        with pytest.raises(ConfigCompositionException) as caught:
            composer(["model=mlp", override])
        assert isinstance(caught.value.__cause__, cause)
        assert describe_error(caught.value).startswith(described)


@pytest.mark.parametrize(
    ("override", "is_value"),
    [
        ("optimizer.learning_rate=0.1", True),
        ("model=cnn", False),
        ("+model.extra=1", False),
        ("~model.dropout_rate", False),
        ("hydra/launcher=basic", False),
        ("model@alt=mlp", False),
    ],
)
def test_value_overrides_are_told_from_group_overrides(override, is_value):
    assert is_value_override(override) is is_value
