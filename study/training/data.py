"""Data sets: loading (Keras download, a local IDX folder, a folder of images in class
subfolders, a .npz, scikit-learn digits), checking what was loaded, the seeded validation
split, and a digest of exactly the arrays a run trains and evaluates on.

Whatever the source, the arrays are checked before a run exists: images (N, height, width) or
(N, height, width, channels) of integer pixels 0..255, integer labels 0..K-1 (K from
`data.num_classes`, else from the labels), train and test images of one shape, no empty
split. A bad file stops the command with one line naming it.

A worker process loads a data set once: `load_dataset` caches by its arguments, so the trials
of a sweep share one copy in memory.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from study.config.schema import DOWNLOADABLE_DATA
from study.core.errors import ConfigError
from study.core.names import DIGITS_SOURCE
from study.training.data_files import IDX_FILES, NPZ_KEYS, download, idx_file, read_digits, read_local

MAX_PIXEL = 255


@dataclass(frozen=True)
class Dataset:
    """Images as float32 in [0, 1] with a channel axis (N, H, W, C); labels as int32 in
    0..num_classes-1."""

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(data_cfg: DictConfig, seed: int) -> Dataset:
    """The data set a config names, split with `seed`; cached per process."""
    return _load_dataset(
        data_cfg.name,
        data_cfg.path,
        data_cfg.validation_size,
        data_cfg.max_train_samples,
        data_cfg.get("num_classes"),
        seed,
        _files_fingerprint(data_cfg.path),
    )


def _files_fingerprint(path: str | None) -> tuple:
    """Size and modification time of local data files: a changed file is read again."""
    if path is None or not Path(path).exists():
        return ()
    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).rglob("*"))
    return tuple(
        (str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files if file.is_file()
    )


@functools.lru_cache(maxsize=2)
def _load_dataset(
    name: str,
    path: str | None,
    validation_size: int,
    max_train_samples: int | None,
    num_classes: int | None,
    seed: int,
    fingerprint: tuple,
) -> Dataset:
    raw, source, names = _read_raw(name, path)
    num_classes = check_arrays(raw, names, num_classes)
    x_train, y_train, x_val, y_val = _split_validation(raw["x_train"], raw["y_train"], validation_size, seed)
    if max_train_samples is not None:
        x_train, y_train = x_train[:max_train_samples], y_train[:max_train_samples]
    arrays = [x_train, y_train, x_val, y_val, raw["x_test"], raw["y_test"]]
    digest = _digest(arrays)
    x_train, x_val, x_test = (_as_float_images(x) for x in (x_train, x_val, raw["x_test"]))
    y_train, y_val, y_test = (y.astype("int32") for y in (y_train, y_val, raw["y_test"]))
    for array in (x_train, y_train, x_val, y_val, x_test, y_test):
        array.flags.writeable = False  # shared between the trials of a worker
    return Dataset(name, source, x_train, y_train, x_val, y_val, x_test, y_test, digest, num_classes)


def _read_raw(name: str, path: str | None) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
    """The four arrays, where they came from, and how an error names each array's file."""
    if path is not None:
        if name == "digits":
            raise ConfigError("data.path: not used with data=digits (it ships with scikit-learn)")
        folder = Path(path)
        raw = read_local(folder)
        if folder.is_dir() and idx_file(folder, "x_train") is not None:
            names = {key: f"data file {idx_file(folder, key)}" for key in IDX_FILES}
        else:
            names = {key: f"data.path: {folder}: {key}" for key in NPZ_KEYS}
        return raw, str(folder.resolve()), names
    names = {key: f"data={name}: {key}" for key in NPZ_KEYS}
    if name == "digits":
        return read_digits(), DIGITS_SOURCE, names
    if name not in DOWNLOADABLE_DATA:
        raise ConfigError(
            f"data.name: {name!r} is not one keras.datasets downloads ({', '.join(DOWNLOADABLE_DATA)}) "
            "nor digits; set data.path to your own data (a .npz, an IDX folder or class subfolders)"
        )
    return download(name), f"keras.datasets.{name}", names


def check_arrays(raw: dict[str, np.ndarray], names: dict[str, str], num_classes: int | None = None) -> int:
    """Refuse arrays a model cannot train on correctly, naming the file; they would otherwise
    train without a word (labels out of range, float images scaled twice) or fail late.
    Returns the number of classes K: `num_classes`, or found from the training labels, which
    must then hold every class 0..K-1 (a stray label would add classes nobody has)."""
    for split in ("train", "test"):
        images_key, labels_key = f"x_{split}", f"y_{split}"
        images, labels = raw[images_key], raw[labels_key]
        if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(
                f"{names[images_key]}: {split} images {images.shape} and labels {labels.shape} "
                "do not match; expected (N, height, width) or (N, height, width, channels) and (N,)"
            )
        if len(images) == 0:
            raise ConfigError(f"{names[images_key]}: expected at least one {split} example, got none")
        _check_pixels(images, names[images_key])
    train_shape, test_shape = raw["x_train"].shape[1:], raw["x_test"].shape[1:]
    if train_shape != test_shape:
        raise ConfigError(
            f"{names['x_test']}: expected test images of the training images' shape {train_shape}, "
            f"got {test_shape}"
        )
    classes = num_classes or _classes_of(raw["y_train"], names["y_train"])
    expected = f"0..{classes - 1}" + (
        " (data.num_classes)" if num_classes else " (the training labels' classes)"
    )
    _check_labels(raw["y_train"], names["y_train"], classes, expected)
    _check_labels(raw["y_test"], names["y_test"], classes, expected)
    return classes


def _classes_of(labels: np.ndarray, name: str) -> int:
    """K from training labels 0..K-1 that hold every class."""
    _check_labels(labels, name, np.iinfo(np.int64).max, "0..K-1")
    present = np.unique(labels)
    classes = int(present[-1]) + 1
    if classes < 2:
        raise ConfigError(f"{name}: expected at least 2 classes, got only label {int(present[-1])}")
    if len(present) < classes:
        missing = sorted(set(range(classes)) - {int(label) for label in present})
        raise ConfigError(
            f"{name}: expected class labels 0..K-1 with training examples of each, got labels up to "
            f"{classes - 1} without {_shown(missing)}; set data.num_classes if some have none on purpose"
        )
    return classes


def _shown(values) -> str:
    values = [str(int(value)) for value in values]
    return ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")


def _check_pixels(images: np.ndarray, name: str) -> None:
    if not np.issubdtype(images.dtype, np.number):  # strings, objects, booleans: no pixels at all
        raise ConfigError(
            f"{name}: expected integer pixel values 0..{MAX_PIXEL} (uint8), got {images.dtype} values"
        )
    if not np.issubdtype(images.dtype, np.integer):
        low, high = float(images.min()), float(images.max())
        hint = "; multiply by 255 and store as uint8" if low >= 0.0 and high <= 1.0 else ""
        raise ConfigError(
            f"{name}: expected integer pixel values 0..{MAX_PIXEL} (uint8), got {images.dtype} "
            f"values in [{low:g}, {high:g}]{hint}"
        )
    low, high = int(images.min()), int(images.max())
    if low < 0 or high > MAX_PIXEL:
        raise ConfigError(f"{name}: expected pixel values 0..{MAX_PIXEL}, got values in [{low}, {high}]")


def _check_labels(labels: np.ndarray, name: str, classes: int, expected: str) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{name}: expected integer class labels {expected}, got {labels.dtype}")
    outside = np.unique(labels[(labels < 0) | (labels >= classes)])
    if len(outside):
        raise ConfigError(f"{name}: expected class labels {expected}, got {_shown(outside)}")


def _split_validation(
    images: np.ndarray, labels: np.ndarray, validation_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if validation_size >= len(images):
        raise ConfigError(
            f"data.validation_size: expected fewer than the {len(images)} training examples, "
            f"got {validation_size}"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = np.sort(order[:validation_size]), np.sort(order[validation_size:])
    return images[train], labels[train], images[val], labels[val]


def _digest(arrays: list[np.ndarray]) -> str:
    """sha256 over the shapes and bytes of the arrays, in a fixed order."""
    hasher = hashlib.sha256()
    for array in arrays:
        hasher.update(str(array.shape).encode())
        hasher.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + hasher.hexdigest()


def _as_float_images(images: np.ndarray) -> np.ndarray:
    scaled = images.astype("float32") / 255.0
    return scaled[..., np.newaxis] if scaled.ndim == 3 else scaled
