"""Data sets: loading (Keras download, local IDX folder or .npz, scikit-learn digits), checking
what was loaded, the seeded validation split, and a digest of exactly the arrays a run trains
and evaluates on.

Whatever the source, the arrays are checked before a run exists: integer pixels 0..255,
integer labels 0..9, train and test images of one shape, no empty split. A bad file stops
the command with one line naming it.

A worker process loads a data set once: `load_dataset` caches by its arguments, so the trials
of a sweep share one copy in memory.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from study.core.errors import ConfigError

# Standard IDX file names of the MNIST family, as published.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = tuple(IDX_FILES)
IDX_UBYTE = 0x08
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # the digits test set never moves with trainer.seed
NUM_CLASSES = 10  # digits and clothes: the mnist, fashion_mnist and digits data sets
MAX_PIXEL = 255


@dataclass(frozen=True)
class Dataset:
    """Images as float32 in [0, 1] with a channel axis (N, H, W, 1); labels as int32."""

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1


def load_dataset(data_cfg: DictConfig, seed: int) -> Dataset:
    """The data set a config names, split with `seed`; cached per process."""
    return _load_dataset(
        data_cfg.name,
        data_cfg.path,
        data_cfg.validation_size,
        data_cfg.max_train_samples,
        seed,
        _files_fingerprint(data_cfg.path),
    )


def _files_fingerprint(path: str | None) -> tuple:
    """Size and modification time of local data files: a changed file is read again."""
    if path is None or not Path(path).exists():
        return ()
    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).iterdir())
    return tuple(
        (file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files if file.is_file()
    )


@functools.lru_cache(maxsize=2)
def _load_dataset(
    name: str,
    path: str | None,
    validation_size: int,
    max_train_samples: int | None,
    seed: int,
    fingerprint: tuple,
) -> Dataset:
    raw, source, names = _read_raw(name, path)
    check_arrays(raw, names)
    x_train, y_train, x_val, y_val = _split_validation(raw["x_train"], raw["y_train"], validation_size, seed)
    if max_train_samples is not None:
        x_train, y_train = x_train[:max_train_samples], y_train[:max_train_samples]
    arrays = [x_train, y_train, x_val, y_val, raw["x_test"], raw["y_test"]]
    digest = _digest(arrays)
    x_train, x_val, x_test = (_as_float_images(x) for x in (x_train, x_val, raw["x_test"]))
    y_train, y_val, y_test = (y.astype("int32") for y in (y_train, y_val, raw["y_test"]))
    for array in (x_train, y_train, x_val, y_val, x_test, y_test):
        array.flags.writeable = False  # shared between the trials of a worker
    return Dataset(name, source, x_train, y_train, x_val, y_val, x_test, y_test, digest)


def _read_raw(name: str, path: str | None) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
    """The four arrays, where they came from, and how an error names each array's file."""
    if path is not None:
        if name == "digits":
            raise ConfigError("data.path: not used with data=digits (it ships with scikit-learn)")
        folder = Path(path)
        raw = _read_local(folder)
        if folder.is_dir():
            names = {key: f"data file {_idx_file(folder, key)}" for key in IDX_FILES}
        else:
            names = {key: f"data.path: {folder}: {key}" for key in NPZ_KEYS}
        return raw, str(folder.resolve()), names
    names = {key: f"data={name}: {key}" for key in NPZ_KEYS}
    if name == "digits":
        return _read_digits(), "sklearn.datasets.load_digits", names
    return _download(name), f"keras.datasets.{name}", names


def check_arrays(raw: dict[str, np.ndarray], names: dict[str, str]) -> None:
    """Refuse arrays a model cannot train on correctly, naming the file; they would otherwise
    train without a word (labels out of range, float images scaled twice) or fail late."""
    for split in ("train", "test"):
        images_key, labels_key = f"x_{split}", f"y_{split}"
        images, labels = raw[images_key], raw[labels_key]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(
                f"{names[images_key]}: {split} images {images.shape} and labels {labels.shape} "
                "do not match; expected (N, height, width) and (N,)"
            )
        if len(images) == 0:
            raise ConfigError(f"{names[images_key]}: expected at least one {split} example, got none")
        _check_pixels(images, names[images_key])
        _check_labels(labels, names[labels_key])
    train_shape, test_shape = raw["x_train"].shape[1:], raw["x_test"].shape[1:]
    if train_shape != test_shape:
        raise ConfigError(
            f"{names['x_test']}: expected test images of the training images' shape {train_shape}, "
            f"got {test_shape}"
        )


def _check_pixels(images: np.ndarray, name: str) -> None:
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


def _check_labels(labels: np.ndarray, name: str) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{name}: expected integer class labels 0..{NUM_CLASSES - 1}, got {labels.dtype}")
    outside = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
    if len(outside):
        shown = ", ".join(str(int(label)) for label in outside[:5]) + (", ..." if len(outside) > 5 else "")
        raise ConfigError(f"{name}: expected class labels 0..{NUM_CLASSES - 1}, got {shown}")


def _download(name: str) -> dict[str, np.ndarray]:
    import keras  # imported here: loading local files must not pay for the backend start-up

    loaders = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}
    try:
        (x_train, y_train), (x_test, y_test) = loaders[name].load_data()
    except Exception as error:  # no network, a proxy, a truncated cache file
        raise ConfigError(
            f"data.name={name}: download through keras.datasets failed ({error}); "
            "set data.path to a local folder of IDX files or a .npz"
        ) from error
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 8x8 images hold 0..16; stretch them to the 0..255 range of the other data sets.
    images = np.clip(digits.images * 16, 0, 255).astype("uint8")
    labels = digits.target.astype("uint8")
    order = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(images))
    n_test = int(len(images) * DIGITS_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return {
        "x_train": images[train],
        "y_train": labels[train],
        "x_test": images[test],
        "y_test": labels[test],
    }


def _read_local(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ConfigError(f"data.path: {path} does not exist; expected a folder of IDX files or a .npz")
    return _read_npz(path) if path.is_file() else _read_idx_folder(path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise ConfigError(
                    f"data.path: {path} lacks {', '.join(missing)}; "
                    f"expected a Keras-format .npz with {', '.join(NPZ_KEYS)}"
                )
            return {key: archive[key] for key in NPZ_KEYS}
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"data.path: {path} is not a readable .npz file ({error})") from None


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    raw = {}
    for key, stem in IDX_FILES.items():
        file = _idx_file(folder, key)
        if file is None:
            raise ConfigError(f"data.path: {folder} has no {stem}.gz (or {stem}); expected the 4 IDX files")
        raw[key] = read_idx(file)
    return raw


def _idx_file(folder: Path, key: str) -> Path | None:
    stem = IDX_FILES[key]
    return next((file for file in (folder / f"{stem}.gz", folder / stem) if file.is_file()), None)


def read_idx(file: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) of unsigned bytes."""
    try:
        data = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigError(f"data file {file}: cannot be read or decompressed ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or not 1 <= data[3] <= 4:
        raise ConfigError(f"data file {file}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise ConfigError(
            f"data file {file}: holds {len(data)} bytes, its header {shape} promises {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def write_idx(file: Path, array: np.ndarray) -> None:
    """Write unsigned bytes as an IDX file, gzip-compressed when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    file.write_bytes(gzip.compress(payload) if file.suffix == ".gz" else payload)


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
    return (images.astype("float32") / 255.0)[..., np.newaxis]
