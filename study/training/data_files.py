"""Reading a data set's four arrays (x_train, y_train, x_test, y_test) from where it lives:
keras.datasets, scikit-learn's digits, a Keras-format .npz, a folder of IDX files, or a folder
of images in class subfolders. What they hold is checked by `study.training.data`."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from study.core.errors import ConfigError
from study.core.names import DIGITS_PIXEL_FACTOR

# Standard IDX file names of the MNIST family, as published.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


NPZ_KEYS = tuple(IDX_FILES)


IDX_UBYTE = 0x08


MAX_GZIP_RATIO = 1032  # deflate's largest expansion: a header promising more is refused unread


TEST_FRACTION = 0.2  # of a data set that comes in one piece (digits, an image folder)


TEST_SEED = 0  # such a test set never moves with trainer.seed


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def download(name: str) -> dict[str, np.ndarray]:
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


def read_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 8x8 images hold 0..16; stretch them to the 0..255 range of the other data sets.
    images = np.clip(digits.images * DIGITS_PIXEL_FACTOR, 0, 255).astype("uint8")
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


def read_local(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ConfigError(
            f"data.path: {path} does not exist; expected a folder of IDX files or class subfolders, or a .npz"
        )
    if path.is_file():
        return _read_npz(path)
    if idx_file(path, "x_train") is None and any(child.is_dir() for child in path.iterdir()):
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
        file = idx_file(folder, key)
        if file is None:
            raise ConfigError(f"data.path: {folder} has no {stem}.gz (or {stem}); expected the 4 IDX files")
        raw[key] = read_idx(file)
    return raw


def idx_file(folder: Path, key: str) -> Path | None:
    stem = IDX_FILES[key]
    return next((file for file in (folder / f"{stem}.gz", folder / stem) if file.is_file()), None)


def read_idx(file: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) of unsigned bytes.

    The header comes first, from the first bytes of the (decompressed) stream; then exactly the
    bytes it declares are read, and one more to see that nothing follows. A file that holds more
    (a gzip bomb under a small header) is refused after those bytes, not after all of it, and
    a header that promises more than the file can hold is refused before any of it.
    """
    try:
        with gzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb") as stream:
            shape = _idx_shape(file, stream.read(4), stream)
            header_size, declared = 4 + 4 * len(shape), math.prod(shape)
            _check_room(file, shape, header_size + declared)
            data = stream.read(declared)
            more = stream.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigError(f"data file {file}: cannot be read or decompressed ({error})") from None
    if len(data) != declared or more:
        held = f"more than {header_size + declared}" if more else str(header_size + len(data))
        raise ConfigError(
            f"data file {file}: holds {held} bytes, its header {shape} promises {header_size + declared}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _idx_shape(file: Path, magic: bytes, stream) -> tuple[int, ...]:
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != IDX_UBYTE or not 1 <= magic[3] <= 4:
        raise ConfigError(f"data file {file}: not an IDX file of unsigned bytes (bad magic number)")
    dims = stream.read(4 * magic[3])
    if len(dims) != 4 * magic[3]:
        raise ConfigError(f"data file {file}: its IDX header ends early ({4 + len(dims)} bytes)")
    return struct.unpack(f">{magic[3]}I", dims)


def _check_room(file: Path, shape: tuple[int, ...], promised: int) -> None:
    """Deflate expands at most about 1032:1; an uncompressed file holds exactly its size."""
    size = file.stat().st_size
    room = size * MAX_GZIP_RATIO if file.suffix == ".gz" else size
    if promised > room:
        raise ConfigError(
            f"data file {file}: its header {shape} promises {promised} bytes, "
            f"more than a file of {size} bytes can hold"
        )


def write_idx(file: Path, array: np.ndarray) -> None:
    """Write unsigned bytes as an IDX file, gzip-compressed when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    file.write_bytes(gzip.compress(payload) if file.suffix == ".gz" else payload)


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
