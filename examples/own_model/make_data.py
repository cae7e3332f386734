"""Writes data/tiny_rgb.npz: 3 classes of 16x16 colour images (uint8 pixels, labels 0..2), in the
Keras format `data.path` reads (x_train, y_train, x_test, y_test). Stands in for your own data."""

from pathlib import Path

import numpy as np


def images_of(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 100, (count, 16, 16, 3))
    for image, label in zip(images, labels, strict=True):
        image[4:12, 4:12, label] += 40  # a coloured square: red, green or blue
    return images.astype("uint8"), labels.astype("uint8")


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = images_of(600, rng), images_of(150, rng)
    Path("data").mkdir(exist_ok=True)
    np.savez("data/tiny_rgb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print("wrote data/tiny_rgb.npz:", x_train.shape, "train,", x_test.shape, "test, 3 classes")
