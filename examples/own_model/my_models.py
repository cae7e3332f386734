"""A model of your own for `study`: a builder (model_cfg, input_shape, num_classes) -> keras.Model
that outputs one logit per class. Its hyperparameters are the keys of conf/model/tiny_cnn.yaml."""

import keras
from keras import layers


def tiny_cnn(cfg, input_shape, num_classes):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(cfg.width, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(2 * cfg.width, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(cfg.dropout_rate),
            layers.Dense(num_classes),
        ],
        name="tiny_cnn",
    )
