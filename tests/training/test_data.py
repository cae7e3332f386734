"""Data loading: local IDX folders and .npz files, digits, the seeded split and the digest."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from omegaconf import OmegaConf

from study.core.errors import ConfigError
from study.training.data import load_dataset
from study.training.data_files import IDX_FILES, read_idx, write_idx
from tests.helpers import IMAGE_SIZE, TINY_SIZES, TINY_VALIDATION, synthetic_digits


def data_cfg(**values):
    base = {"name": "mnist", "path": None, "validation_size": TINY_VALIDATION, "max_train_samples": None}
    return OmegaConf.create({**base, **values})


def test_idx_files_round_trip(tmp_path):
    images, _ = synthetic_digits(5, seed=0)
    for name in ("plain-idx3-ubyte", "packed-idx3-ubyte.gz"):
        write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(read_idx(tmp_path / name), images)


def test_local_idx_folder_is_split_for_validation(tiny_idx_dir):
    data = load_dataset(data_cfg(path=str(tiny_idx_dir)), seed=0)
    assert data.x_train.shape == (TINY_SIZES["train"] - TINY_VALIDATION, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert data.x_val.shape == (TINY_VALIDATION, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert data.x_test.shape == (TINY_SIZES["test"], IMAGE_SIZE, IMAGE_SIZE, 1)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() <= data.x_train.max() <= 1.0
    assert data.num_classes == 10
    assert data.source == str(tiny_idx_dir.resolve())
    # The validation examples are not among the training examples.
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_val)


def test_split_and_digest_follow_the_seed(tiny_idx_dir):
    first = load_dataset(data_cfg(path=str(tiny_idx_dir)), seed=1)
    again = load_dataset(data_cfg(path=str(tiny_idx_dir), max_train_samples=None), seed=1)
    other = load_dataset(data_cfg(path=str(tiny_idx_dir)), seed=2)
    assert first.digest == again.digest and first.digest.startswith("sha256:")
    assert other.digest != first.digest
    assert not np.array_equal(first.y_val, other.y_val)
    fewer = load_dataset(data_cfg(path=str(tiny_idx_dir), max_train_samples=50), seed=1)
    assert len(fewer.x_train) == 50 and fewer.digest != first.digest


def test_npz_in_keras_format(tmp_path):
    x_train, y_train = synthetic_digits(200, seed=3)
    x_test, y_test = synthetic_digits(20, seed=4)
    file = tmp_path / "mnist.npz"
    np.savez(file, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_dataset(data_cfg(path=str(file), validation_size=50), seed=0)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (150, 50, 20)


def test_digits_need_no_download():
    data = load_dataset(data_cfg(name="digits", validation_size=300), seed=0)
    assert data.image_shape == (8, 8, 1)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 1797
    assert data.source == "sklearn.datasets.load_digits"


def copy_of(folder, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "has no t10k-labels-idx1-ubyte.gz"),
        ("not_gzip", "t10k-labels-idx1-ubyte.gz: cannot be read or decompressed"),
        ("bad_magic", "t10k-labels-idx1-ubyte.gz: not an IDX file of unsigned bytes"),
        ("truncated", "t10k-labels-idx1-ubyte.gz: holds"),
    ],
)
def test_damaged_data_files_are_named(tiny_idx_dir, tmp_path, damage, expected):
    folder = copy_of(tiny_idx_dir, tmp_path)
    file = folder / f"{IDX_FILES['y_test']}.gz"
    content = gzip.decompress(file.read_bytes())
    if damage == "missing":
        file.unlink()
    elif damage == "not_gzip":
        file.write_bytes(b"this is not gzip")
    elif damage == "bad_magic":
        file.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + content[4:]))
    else:
        file.write_bytes(gzip.compress(content[:-10]))
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")) as caught:
        load_dataset(data_cfg(path=str(folder)), seed=0)
    assert "\n" not in str(caught.value)


def test_missing_path_and_bad_sizes_are_named(tiny_idx_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: .*nowhere does not exist"):
        load_dataset(data_cfg(path=str(tmp_path / "nowhere")), seed=0)
    with pytest.raises(ConfigError, match=r"data\.validation_size: expected fewer than the 400"):
        load_dataset(data_cfg(path=str(tiny_idx_dir), validation_size=400), seed=0)
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(ConfigError, match=r"broken\.npz is not a readable \.npz"):
        load_dataset(data_cfg(path=str(tmp_path / "broken.npz")), seed=0)


def npz_with(tmp_path, **arrays):
    x_train, y_train = synthetic_digits(200, seed=3)
    x_test, y_test = synthetic_digits(20, seed=4)
    file = tmp_path / "data.npz"
    np.savez(file, **{"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **arrays})
    return file


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (
            {"y_train": np.full(200, 200, np.uint8)},
            "y_train: expected class labels 0..K-1 with training examples of each, got labels up to 200 "
            "without 0, 1, 2, 3, 4, ...; set data.num_classes",
        ),
        (
            {"y_test": np.arange(20) + 30},
            "y_test: expected class labels 0..9 (the training labels' classes), got 30, 31, 32, 33, 34, ...",
        ),
        ({"y_train": np.full(200, -1, np.int64)}, "y_train: expected class labels 0..K-1, got -1"),
        (
            {"y_train": np.zeros(200, np.float32)},
            "y_train: expected integer class labels 0..K-1, got float32",
        ),
        (
            {"x_train": np.full((200, 12, 12), 0.5, np.float32)},
            "x_train: expected integer pixel values 0..255 (uint8), got float32 values in [0.5, 0.5]; "
            "multiply by 255 and store as uint8",
        ),
        (
            {"x_test": np.full((20, 12, 12), 300, np.int16)},
            "x_test: expected pixel values 0..255, got values in",
        ),
        (
            {"x_test": np.zeros((20, 10, 10), np.uint8)},
            "x_test: expected test images of the training images'",
        ),
        (
            {"x_test": np.zeros((0, 12, 12), np.uint8), "y_test": np.zeros(0, np.uint8)},
            "x_test: expected at least one test example, got none",
        ),
        (
            {"y_test": np.zeros(19, np.uint8)},
            "x_test: test images (20, 12, 12) and labels (19,) do not match",
        ),
    ],
)
def test_arrays_a_model_cannot_learn_from_are_refused_when_loaded(tmp_path, arrays, expected):
    file = npz_with(tmp_path, **arrays)
    with pytest.raises(ConfigError) as caught:
        load_dataset(data_cfg(path=str(file), validation_size=50), seed=0)
    assert str(caught.value).startswith(f"data.path: {file}: {expected}")


def test_a_bad_idx_file_is_named(tiny_idx_dir, tmp_path):
    folder = copy_of(tiny_idx_dir, tmp_path)
    labels = folder / f"{IDX_FILES['y_train']}.gz"
    write_idx(labels, np.full(TINY_SIZES["train"], 42, np.uint8))
    with pytest.raises(ConfigError) as caught:
        load_dataset(data_cfg(path=str(folder)), seed=0)
    assert str(caught.value).startswith(
        f"data file {labels}: expected class labels 0..K-1 with training examples"
    )
