"""prunekit.data: IDX files, lookup order, clear errors, bundled and synthetic sets."""

import gzip
import os
import struct

import numpy as np
import pytest

from prunekit.data import DatasetNotFound, load, read_idx, synthetic
from prunekit.errors import ConfigError


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def make_idx_dir(directory, n_train=20, n_test=10, gz=True):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}"), rng.integers(0, 10, (n,)))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    assert np.array_equal(read_idx(path), array)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ConfigError, match="is not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((4, 5), dtype=np.uint8))
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ConfigError, match=r"is truncated: header says \(4, 5\)"):
        read_idx(short)


def test_lookup_env_var_and_torchvision_layout(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "FashionMNIST" / "raw", gz=False)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    data = load("fashion-mnist")
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert data.source.endswith(os.path.join("FashionMNIST", "raw"))


def test_explicit_root_comes_first(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=7)
    assert load("mnist", root=str(tmp_path)).x_train.shape[0] == 7


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("prunekit.data.datasets.DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.setattr("prunekit.data.datasets.CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFound) as info:
        load("mnist")
    message = str(info.value)
    for place in ("nowhere", "debian", "cache"):
        assert place in message
    assert "download=True" in message


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; accepted: mnist, fashion-mnist"):
        load("cifar")


def test_digits_and_synthetic():
    pytest.importorskip("sklearn")
    digits = load("digits")
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    s = synthetic(n_train=30, n_test=10)
    assert s.x_train.shape == (30, 1, 28, 28) and set(np.unique(s.y_train)) <= set(range(10))


def test_idx_cut_inside_its_header(tmp_path):
    path = tmp_path / "cut"
    write_idx(path, np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:6])  # 4 bytes of magic, 2 of the first dimension
    with pytest.raises(ConfigError, match=r"'.*cut' is truncated inside its header"):
        read_idx(path)


def test_idx_with_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    write_idx(path, np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ConfigError, match="longer than its header says"):
        read_idx(path)


def test_images_and_labels_must_agree(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=20)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ConfigError, match="holds 20 images but .* holds 7 labels"):
        load("mnist", root=str(tmp_path))


def test_missing_root_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "elsewhere" / "mnist")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "elsewhere"))  # data that a fallback would find
    with pytest.raises(DatasetNotFound, match="data root '.*typo' is not a directory"):
        load("mnist", root=str(tmp_path / "typo"))


def test_class_subsets_keep_those_classes_relabelled_in_order():
    pytest.importorskip("sklearn")
    full, part = load("digits"), load("digits:7,0,2")
    assert part.classes == 3 and part.name == "digits:7,0,2"
    keep = np.isin(full.y_train, [7, 0, 2])
    np.testing.assert_array_equal(part.x_train, full.x_train[keep])
    np.testing.assert_array_equal(part.y_train, [{7: 0, 0: 1, 2: 2}[int(v)] for v in full.y_train[keep]])
    assert load("digits:3-5").classes == 3
    with pytest.raises(ConfigError, match="classes after ':' must be a range or a list"):
        load("digits:a-b")
    with pytest.raises(ConfigError, match=r"classes \[3, 3\] of 'digits': need distinct values in 0..9"):
        load("digits:3,3")
