"""Every tutorial preset in conf/experiment/ composes, says where it comes from, and trains."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from study.config.checks import checked_config
from study.config.schema import CONFIG_DIR
from study.training.run import train

PRESETS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_the_six_tutorial_setups_are_there():
    assert PRESETS == [
        "deep_mnist_cnn",
        "deep_mnist_softmax",
        "mechanics101_mlp",
        "notebook_convnet",
        "tf_layers_cnn",
        "workshop_softmax",
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_names_its_tutorial_figure_and_loss_convention(preset):
    text = (CONFIG_DIR / "experiment" / f"{preset}.yaml").read_text()
    header = text.split("defaults:")[0]
    assert text.startswith("# @package _global_\n")
    assert "Published" in header and "%" in header
    assert "Loss convention:" in header
    assert f"python -m study.train +experiment={preset}" in header


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_a_few_steps(preset, make_config):
    cfg = make_config(f"+experiment={preset}", "trainer.max_steps=3", model=None)
    checked = checked_config(cfg)
    assert checked.trainer.max_steps == 3
    metrics = train(cfg)
    assert metrics["epochs"] == 1
    client = MlflowClient(tracking_uri=checked.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == preset
    assert run.data.params["trainer.batch_size"] == str(checked.trainer.batch_size)
