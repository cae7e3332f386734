"""Optimizer registry: config group option -> Keras optimizer."""

from __future__ import annotations

from collections.abc import Callable

import keras
from omegaconf import DictConfig

OPTIMIZERS: dict[str, Callable[[DictConfig], keras.optimizers.Optimizer]] = {
    "sgd": lambda cfg: keras.optimizers.SGD(
        learning_rate=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov
    ),
    "adam": lambda cfg: keras.optimizers.Adam(
        learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon
    ),
    "rmsprop": lambda cfg: keras.optimizers.RMSprop(
        learning_rate=cfg.learning_rate, rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon
    ),
}


def build_optimizer(cfg: DictConfig) -> keras.optimizers.Optimizer:
    return OPTIMIZERS[cfg.name](cfg)
