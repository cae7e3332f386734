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
import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from study.config.schema import DOWNLOADABLE_DATA
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
TEST_FRACTION = 0.2  # of a data set that comes in one piece (digits, an image folder)
TEST_SEED = 0  # such a test set never moves with trainer.seed
MAX_PIXEL = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


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
        raw = _read_local(folder)
        if folder.is_dir() and _idx_file(folder, "x_train") is not None:
            names = {key: f"data file {_idx_file(folder, key)}" for key in IDX_FILES}
        else:
            names = {key: f"data.path: {folder}: {key}" for key in NPZ_KEYS}
        return raw, str(folder.resolve()), names
    names = {key: f"data={name}: {key}" for key in NPZ_KEYS}
    if name == "digits":
        return _read_digits(), "sklearn.datasets.load_digits", names
    if name not in DOWNLOADABLE_DATA:
        raise ConfigError(
            f"data.name: {name!r} is not one keras.datasets downloads ({', '.join(DOWNLOADABLE_DATA)}) "
            "nor digits; set data.path to your own data (a .npz, an IDX folder or class subfolders)"
        )
    return _download(name), f"keras.datasets.{name}", names


def check_arrays(raw: dict[str, np.ndarray], names: dict[str, str], num_classes: int | None = None) -> int:
    """Refuse arrays a model cannot train on correctly, naming the file; they would otherwise
    train without a word (labels out of range, float images scaled twice) or fail late.
    Returns the number of classes: `num_classes`, or one more than the largest label."""
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
        _check_labels(labels, names[labels_key], num_classes)
    train_shape, test_shape = raw["x_train"].shape[1:], raw["x_test"].shape[1:]
    if train_shape != test_shape:
        raise ConfigError(
            f"{names['x_test']}: expected test images of the training images' shape {train_shape}, "
            f"got {test_shape}"
        )
    found = int(max(raw["y_train"].max(), raw["y_test"].max())) + 1
    if num_classes is None and found < 2:
        raise ConfigError(f"{names['y_train']}: expected at least 2 classes, got labels of 1")
    return num_classes if num_classes is not None else found


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


def _check_labels(labels: np.ndarray, name: str, num_classes: int | None) -> None:
    expected = f"0..{num_classes - 1} (data.num_classes)" if num_classes else "0..K-1"
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{name}: expected integer class labels {expected}, got {labels.dtype}")
    outside = np.unique(labels[(labels < 0) | (labels >= (num_classes or np.iinfo(np.int64).max))])
    if len(outside):
        shown = ", ".join(str(int(label)) for label in outside[:5]) + (", ..." if len(outside) > 5 else "")
        raise ConfigError(f"{name}: expected class labels {expected}, got {shown}")


def _download(name: str) -> dict[str, np.ndarray]:
    import keras  # imported here: loading local files must not pay for the backend start-up

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # no network, a proxy, a truncated cache file
        raise ConfigError(
            f"data.name={name}: download through keras.datasets failed ({error}); "
            "set data.path to a local folder of IDX files or a .npz"
        ) from error
    # CIFAR's labels come as (N, 1).
    return {
        "x_train": x_train,
        "y_train": y_train.reshape(-1),
        "x_test": x_test,
        "y_test": y_test.reshape(-1),
    }


def _read_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 8x8 images hold 0..16; stretch them to the 0..255 range of the other data sets.
    images = np.clip(digits.images * 16, 0, 255).astype("uint8")
    labels = digits.target.astype("uint8")
    return _split_test(images, labels)


def _split_test(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """A fixed test set (TEST_FRACTION, drawn with TEST_SEED) for data that comes in one piece."""
    order = np.random.default_rng(TEST_SEED).permutation(len(images))
    n_test = max(1, int(len(images) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return {
        "x_train": images[train],
        "y_train": labels[train],
        "x_test": images[test],
        "y_test": labels[test],
    }


def _read_local(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ConfigError(
            f"data.path: {path} does not exist; expected a folder of IDX files or class subfolders, or a .npz"
        )
    if path.is_file():
        return _read_npz(path)
    if _idx_file(path, "x_train") is None and any(child.is_dir() for child in path.iterdir()):
        return _read_image_folder(path)
    return _read_idx_folder(path)


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
    scaled = images.astype("float32") / 255.0
    return scaled[..., np.newaxis] if scaled.ndim == 3 else scaled


def _read_image_folder(folder: Path) -> dict[str, np.ndarray]:
    """Images in class subfolders, as `keras.utils.image_dataset_from_directory` reads them
    (labels by class folder name, in sorted order): `train/` and `test/` with the same class
    folders, or the class folders alone (then TEST_FRACTION of them is the fixed test set)."""
    splits = {split: folder / split for split in ("train", "test")}
    if all(path.is_dir() for path in splits.values()):
        classes = _class_folders(splits["train"])
        if _class_folders(splits["test"]) != classes:
            raise ConfigError(
                f"data.path: {splits['test']}: expected the class folders of train/ ({', '.join(classes)})"
            )
        train_images, train_labels = _read_classes(splits["train"], classes)
        test_images, test_labels = _read_classes(splits["test"], classes)
        return {
            "x_train": train_images,
            "y_train": train_labels,
            "x_test": test_images,
            "y_test": test_labels,
        }
    classes = _class_folders(folder)
    return _split_test(*_read_classes(folder, classes))


def _class_folders(folder: Path) -> list[str]:
    classes = sorted(child.name for child in folder.iterdir() if child.is_dir())
    if len(classes) < 2:
        raise ConfigError(
            f"data.path: {folder}: expected a subfolder of images per class (2 or more), got {classes}"
        )
    return classes


def _read_classes(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images, labels, shape = [], [], None
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB"))
            except (OSError, UnidentifiedImageError) as error:
                raise ConfigError(f"data file {file}: not a readable image ({error})") from None
            if shape is None:
                shape = pixels.shape
            elif pixels.shape != shape:
                raise ConfigError(
                    f"data file {file}: expected images of one size {shape}, got {pixels.shape}"
                )
            images.append(pixels)
            labels.append(label)
    if not images:
        raise ConfigError(
            f"data.path: {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
        )
    return np.stack(images).astype("uint8"), np.asarray(labels, dtype="int32")
