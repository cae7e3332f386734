"""The three classic MNIST-tutorial models, in Keras 3, and the user's own (`model.builder`).
Each outputs logits.

The logits layer computes in float32 under every dtype policy: with mixed precision the
softmax cross-entropy stays numerically stable (the Keras mixed-precision guide's advice).

Builders take the model config, the image shape (H, W, C) and the number of classes, so the
same architecture adapts to 28x28 MNIST and to 8x8 digits.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers
from omegaconf import DictConfig

from study.config.probes import import_builder
from study.core.errors import ConfigError


def build_softmax(cfg: DictConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Softmax regression: one dense layer on the flattened pixels."""
    return keras.Sequential(
        [
            keras.Input(shape=image_shape),
            layers.Flatten(),
            layers.Dense(num_classes, name="logits", dtype="float32"),
        ],
        name="softmax",
    )


def build_mlp(cfg: DictConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The Mechanics-101 network: hidden1 and hidden2 ReLU layers, then logits."""
    return keras.Sequential(
        [
            keras.Input(shape=image_shape),
            layers.Flatten(),
            layers.Dense(cfg.hidden1_units, activation="relu", name="hidden1"),
            layers.Dropout(cfg.dropout_rate),
            layers.Dense(cfg.hidden2_units, activation="relu", name="hidden2"),
            layers.Dropout(cfg.dropout_rate),
            layers.Dense(num_classes, name="logits", dtype="float32"),
        ],
        name="mlp",
    )


def build_cnn(cfg: DictConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The Deep-MNIST network: two conv-pool stages, a dense layer, dropout, logits."""
    return keras.Sequential(
        [
            keras.Input(shape=image_shape),
            layers.Conv2D(cfg.filters1, cfg.kernel_size, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(2, padding="same", name="pool1"),
            layers.Conv2D(cfg.filters2, cfg.kernel_size, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, padding="same", name="pool2"),
            layers.Flatten(),
            layers.Dense(cfg.dense_units, activation="relu", name="dense"),
            layers.Dropout(cfg.dropout_rate),
            layers.Dense(num_classes, name="logits", dtype="float32"),
        ],
        name="cnn",
    )


MODELS: dict[str, Callable[[DictConfig, tuple[int, ...], int], keras.Model]] = {
    "softmax": build_softmax,
    "mlp": build_mlp,
    "cnn": build_cnn,
}


def build_model(cfg: DictConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """One of the built-in models, or the user's (`model.builder`), checked to be a Keras model
    that outputs a logit per class."""
    if "builder" not in cfg:
        return MODELS[cfg.name](cfg, image_shape, num_classes)
    model = import_builder(cfg.builder)(cfg, image_shape, num_classes)
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"model.builder: {cfg.builder} returned {type(model).__name__}; expected a keras.Model"
        )
    outputs = tuple(model.output_shape) if hasattr(model, "output_shape") else None
    if outputs is not None and outputs[-1] != num_classes:
        raise ConfigError(
            f"model.builder: {cfg.builder} returned a model with outputs {outputs}; expected "
            f"{num_classes} logits per image (its num_classes argument)"
        )
    return model
