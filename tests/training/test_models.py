"""Each model builds for 28x28 and 8x8 images, outputs logits and learns in a few steps."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from study.config.schema import SCHEMAS
from study.training.models import MODELS, build_model
from study.training.optimizers import OPTIMIZERS, build_optimizer


def model_cfg(name: str):
    return OmegaConf.structured(SCHEMAS["model"][name])


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (8, 8, 1)])
def test_model_adapts_to_image_shape(name, image_shape):
    model = build_model(model_cfg(name), image_shape, num_classes=10)
    logits = model(np.zeros((3, *image_shape), dtype="float32"))
    assert tuple(logits.shape) == (3, 10)


def test_cnn_is_the_deep_mnist_architecture():
    model = build_model(model_cfg("cnn"), (28, 28, 1), num_classes=10)
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    assert (conv1.filters, conv1.kernel_size, conv2.filters) == (32, (5, 5), 64)
    assert model.get_layer("dense").units == 1024
    assert model.get_layer("conv2").output.shape[1:] == (14, 14, 64)
    # 5x5x1x32+32 + 5x5x32x64+64 + 7x7x64x1024+1024 + 1024x10+10
    assert model.count_params() == 3_274_634


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_trains_a_few_steps(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=64)
    images = np.zeros((64, 8, 8, 1), dtype="float32")
    images[np.arange(64), labels * 2, :, 0] = 1.0  # class k lights row 2k
    model = build_model(model_cfg(name), (8, 8, 1), num_classes=4)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = model.evaluate(images, labels, verbose=0)[0]
    model.fit(images, labels, batch_size=16, epochs=3, verbose=0)
    after = model.evaluate(images, labels, verbose=0)[0]
    assert after < before


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_take_their_config(name):
    cfg = OmegaConf.structured(SCHEMAS["optimizer"][name])
    cfg.learning_rate = 0.125
    optimizer = build_optimizer(cfg)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == 0.125
