"""Every config group option composes; typos, wrong types and bad values fail with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from study.config.checks import checked_config, checked_sweep_config
from study.config.schema import CONFIG_DIR
from study.core.cli import config_paths_from_cwd
from study.core.errors import ConfigError, describe_error
from study.training.replay_config import write_replay_config
from tests.helpers import compose_config

GROUPS = ("data", "model", "optimizer", "trainer", "mlflow")


def group_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_checks(group, option, tmp_path):
    # The custom model is a user's: it names a builder (here one of the package's own).
    builder = ["model.builder=study.training.models:build_softmax"] if option == "custom" else []
    cfg = compose_config("train", [f"{group}={option}", f"runs_dir={tmp_path}", *builder])
    checked = checked_config(cfg)
    if group in ("data", "model", "optimizer"):
        assert checked[group].name == option
    assert checked.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_group_options_are_typed_by_their_schema():
    cfg = compose_config("train", ["model=mlp", "optimizer=sgd"])
    assert type(cfg.model.hidden1_units) is int
    assert OmegaConf.get_type(cfg.model).__name__ == "MlpConfig"
    assert OmegaConf.get_type(cfg.optimizer).__name__ == "SgdConfig"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.dropuot_rate=0.3"], "model.dropuot_rate: Key 'dropuot_rate' not in 'CnnConfig'"),
        (["model.dropout_rate=abc"], "model.dropout_rate: Value 'abc' of type 'str' could not be converted"),
        (["trainer.epochs=three"], "trainer.epochs: Value 'three' of type 'str' could not be converted"),
        (["model=resnet"], "Could not find 'model/resnet'; available: cnn, custom, mlp, softmax"),
        (["model=softmax", "model.dropout_rate=0.2"], "model.dropout_rate: Key 'dropout_rate' not in"),
    ],
)
def test_compose_time_errors_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(HydraException) as caught:
        compose_config("train", overrides)
    message = describe_error(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.learning_rate=0"], "optimizer.learning_rate: expected a finite number > 0, got 0.0"),
        (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate: expected a finite number > 0"),
        (["model.dropout_rate=1.0"], "model.dropout_rate: expected a number in [0, 1), got 1.0"),
        (["model.dropout_rate=-0.1"], "model.dropout_rate: expected a number in [0, 1)"),
        (["trainer.batch_size=0"], "trainer.batch_size: expected an integer >= 1"),
        (["trainer.max_steps=0"], "trainer.max_steps: expected null or an integer >= 1"),
        (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum: expected a number in [0, 1]"),
    ],
)
def test_bad_values_fail_the_check_naming_the_key(overrides, expected):
    cfg = compose_config("train", overrides)
    with pytest.raises(ConfigError) as caught:
        checked_config(cfg)
    assert expected in str(caught.value)


def test_a_config_that_skipped_composition_is_checked_too():
    cfg = OmegaConf.create(
        {
            "data": {"name": "mnist"},
            "model": {"name": "cnn", "dropuot_rate": 0.1},
            "optimizer": {"name": "adam"},
        }
    )
    with pytest.raises(ConfigError, match=r"model\.dropuot_rate: Key 'dropuot_rate' not in 'CnnConfig'"):
        checked_config(cfg)
    cfg.model = {"name": "transformer"}
    with pytest.raises(ConfigError, match=r"model\.name: expected one of \['cnn', 'mlp', 'softmax'\]"):
        checked_config(cfg)


def test_checked_config_fills_schema_defaults_and_is_read_only():
    cfg = OmegaConf.create(
        {"data": {"name": "digits"}, "model": {"name": "mlp"}, "optimizer": {"name": "sgd"}, "runs_dir": "x"}
    )
    checked = checked_config(cfg)
    assert checked.model.hidden1_units == 128
    assert checked.mlflow.tracking_uri == "sqlite:///x/mlflow.db"
    with pytest.raises(Exception, match="read-only"):
        checked.model.hidden1_units = 3


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.beta_1=1.0"], "optimizer.beta_1: expected a number in [0, 1), got 1.0"),
        (["optimizer.epsilon=-1e-7"], "optimizer.epsilon: expected a finite number > 0"),
        (["optimizer=rmsprop", "optimizer.momentum=1.0"], "optimizer.momentum: expected a number in [0, 1)"),
        (["trainer.seed=4294967296"], "trainer.seed: expected an integer in [0, 2**32 - 1]"),
        (["mlflow.tracking_uri=sqlite:/runs/mlflow.db"], "mlflow.tracking_uri: expected a database URL"),
    ],
)
def test_range_checks_declared_on_the_schema_fields(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        checked_config(compose_config("train", overrides))
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["study.n_trials=0"], "study.n_trials: expected an integer >= 1, got 0"),
        (["study.timeout=0"], "study.timeout: expected null or a finite number > 0, got 0.0"),
        (["study.store_retry_seconds=-1"], "study.store_retry_seconds: expected an integer >= 0, got -1"),
        (["study.name=a b"], "study.name: expected letters, digits, '_', '.' and '-' (at most 100), got"),
        (["sampler.seed=-1"], "sampler.seed: expected null or an integer in [0, 2**32 - 1], got -1"),
        (
            ["pruner=hyperband", "pruner.reduction_factor=1"],
            "pruner.reduction_factor: expected an integer >= 2",
        ),
        (
            ["pruner=hyperband", "pruner.max_resource=0"],
            "pruner.max_resource: expected 'auto' or an integer >= 1",
        ),
        (["pruner=median", "pruner.n_warmup_steps=-1"], "pruner.n_warmup_steps: expected an integer >= 0"),
        (
            ["pruner=threshold", "pruner.lower=null"],
            "pruner: threshold needs pruner.lower or pruner.upper, got neither",
        ),
    ],
)
def test_study_settings_are_checked(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        checked_sweep_config(compose_config("sweep", overrides))
    assert str(caught.value).startswith(expected)


REPLAY_CHECK = """
import sys
from omegaconf import OmegaConf
from study.config import checked_config
print(checked_config(OmegaConf.load(sys.argv[1])).model.name)
"""


def test_a_fresh_process_checks_a_replay_config_without_hydra(tmp_path):
    """A logged config.yaml is data: it holds no Hydra block (Hydra would act on one), and a
    fresh process, as `study.reproduce` is, checks it."""
    cfg = compose_config("train", ["model=mlp", f"runs_dir={tmp_path}"])
    write_replay_config(checked_config(cfg), tmp_path / "config.yaml", run_id="0" * 32)
    assert "hydra" not in OmegaConf.load(tmp_path / "config.yaml")
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_CHECK, str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "mlp"


def test_a_relative_config_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "replay").mkdir()
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "replay")
    assert config_paths_from_cwd(["--config-path", "replay", "-cn", "config"]) == [
        "--config-path",
        absolute,
        "-cn",
        "config",
    ]
    assert config_paths_from_cwd(["-cp=replay"]) == [f"-cp={absolute}"]
    assert config_paths_from_cwd(["--config-path", "../conf"]) == ["--config-path", "../conf"]  # not here
