"""Find and load the data sets prunekit's demo, examples and benchmarks use. numpy only.

``load("fashion-mnist")`` looks, in order, in: a directory the caller gives, ``$PRUNEKIT_DATA``,
the Debian package directory (``apt-get install dataset-fashion-mnist`` puts the files in
``/usr/share/datasets/fashion-mnist``), and torchvision's folder layout under ``~/.cache/prunekit``
or the given root (``<root>/FashionMNIST/raw``). With ``download=True`` and no local copy,
torchvision downloads it (needs a network). When nothing is found the error lists every place
searched. scikit-learn's bundled 8x8 digits need no files at all.

A name may pick classes: ``fashion-mnist:0-4`` (a range) or ``digits:0,2,7`` keeps only those
classes and numbers them 0, 1, ... in the order given (for transfer learning between class sets).
"""

import os
from dataclasses import dataclass

import numpy as np

from prunekit.data.idx import read_idx
from prunekit.errors import ConfigError

__all__ = ["Dataset", "load", "DATASETS", "DatasetNotFound", "synthetic"]

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_SETS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "FashionMNIST")}
DATASETS = ("mnist", "fashion-mnist", "digits", "synthetic")
DEBIAN_DIR = "/usr/share/datasets"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "prunekit")


class DatasetNotFound(ConfigError):
    """No local copy of a data set was found (and downloading was not allowed or failed)."""


@dataclass
class Dataset:
    """Images as float32 ``(N, 1, H, W)`` in [0, 1], labels as int64 ``(N,)``, for train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    classes: int = 10

    def select_classes(self, keep):
        """Only the examples of the classes in ``keep``, relabelled 0 .. len(keep) - 1 in that order."""
        keep = [int(k) for k in keep]
        bad = [k for k in keep if not 0 <= k < self.classes]
        if bad or len(set(keep)) != len(keep) or not keep:
            raise ConfigError(f"classes {keep} of {self.name!r}: need distinct values in 0..{self.classes - 1}")
        relabel = np.full(self.classes, -1, np.int64)
        relabel[keep] = np.arange(len(keep))

        def pick(x, y):
            chosen = relabel[y] >= 0
            return x[chosen], relabel[y[chosen]]
        x_train, y_train = pick(self.x_train, self.y_train)
        x_test, y_test = pick(self.x_test, self.y_test)
        name = f"{self.name}:{','.join(map(str, keep))}"
        return Dataset(name, x_train, y_train, x_test, y_test, self.source, len(keep))

    def subset(self, train=None, test=None):
        """The first ``train`` / ``test`` examples (for quick runs)."""
        return Dataset(self.name, self.x_train[:train], self.y_train[:train], self.x_test[:test],
                       self.y_test[:test], self.source, self.classes)


def _candidates(name, root):
    debian_name, tv_name = _IDX_SETS[name]
    places = []
    for base in (root, os.environ.get("PRUNEKIT_DATA")):
        if base:
            places += [base, os.path.join(base, debian_name), os.path.join(base, tv_name, "raw")]
    places.append(os.path.join(DEBIAN_DIR, debian_name))
    places.append(os.path.join(CACHE_DIR, tv_name, "raw"))
    return places


def _find_file(directory, stem):
    for suffix in (".gz", ""):
        path = os.path.join(directory, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def _load_idx_dir(name, directory):
    arrays = {}
    for split, (images, labels) in _FILES.items():
        paths = [_find_file(directory, images), _find_file(directory, labels)]
        if None in paths:
            return None
        x, y = read_idx(paths[0]), read_idx(paths[1])
        if x.ndim != 3 or y.ndim != 1:
            raise ConfigError(f"{paths[0]!r} and {paths[1]!r} must hold images (N, H, W) and labels (N,); "
                              f"got shapes {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ConfigError(f"{paths[0]!r} holds {len(x)} images but {paths[1]!r} holds {len(y)} labels")
        arrays[split] = (x, y)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]

    def images(x):
        return (x.astype(np.float32) / 255.0)[:, None, :, :]
    return Dataset(name, images(xtr), ytr.astype(np.int64), images(xte), yte.astype(np.int64), directory)


def _download(name, root):
    try:
        import torchvision
    except ImportError as e:
        raise DatasetNotFound(f"download of {name!r} needs torchvision: {e}") from None
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    root = root or CACHE_DIR
    try:
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DatasetNotFound(f"downloading {name!r} into {root!r} failed: {e}") from None
    return _load_idx_dir(name, os.path.join(root, _IDX_SETS[name][1], "raw"))


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFound("the 'digits' data set needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed split: 1437 train, 360 test
    x, y = x[order], y[order]
    return Dataset("digits", x[:1437], y[:1437], x[1437:], y[1437:], "scikit-learn (bundled)")


def synthetic(n_train=512, n_test=128, size=28, classes=10, seed=0):
    """A small learnable image set for tests: each class is a noisy bar at its own position."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, classes, n)
        x = rng.normal(0, 0.2, (n, 1, size, size)).astype(np.float32)
        rows = (y * (size - 2) // max(1, classes - 1)).astype(int)
        for i, r in enumerate(rows):
            x[i, 0, r:r + 2, :] += 1.0
        return np.clip(x, 0, 1), y.astype(np.int64)
    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Dataset("synthetic", xtr, ytr, xte, yte, "generated", classes)


def _parse_classes(name, spec):
    keep = []
    try:
        for part in spec.split(","):
            low, _, high = part.partition("-")
            keep += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise ConfigError(f"dataset {name!r}: classes after ':' must be a range or a list, "
                          f"e.g. 'fashion-mnist:0-4' or 'digits:0,2,7'; got {spec!r}") from None
    return keep


def load(name, root=None, download=False):
    """Load ``mnist``, ``fashion-mnist``, ``digits`` or ``synthetic``, optionally some classes only.

    Args:
        name: one of :data:`DATASETS`, optionally followed by ``:CLASSES`` (``fashion-mnist:5-9``,
            ``digits:0,1,2``): only those classes, relabelled 0, 1, ... in the order given.
        root: a directory to look in first (IDX files, possibly in torchvision's layout); it must exist.
        download: allow a torchvision download when no local copy exists.

    Raises:
        DatasetNotFound: with every place searched.
    """
    if isinstance(name, str) and ":" in name:
        base, spec = name.split(":", 1)
        return load(base, root, download).select_classes(_parse_classes(name, spec))
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return synthetic()
    if root is not None and not os.path.isdir(root):
        raise DatasetNotFound(f"data root {os.fspath(root)!r} is not a directory; pass a directory that holds "
                              f"the IDX files of {name!r}, or leave it out to search the usual places")
    places = _candidates(name, root)
    for place in places:
        if os.path.isdir(place):
            found = _load_idx_dir(name, place)
            if found is not None:
                return found
    if download:
        return _download(name, root)
    hint = (f"apt-get install dataset-{name}" if name == "fashion-mnist" else "pass download=True (--download)")
    raise DatasetNotFound(f"{name!r} not found; looked in: {', '.join(places)}. Get it with: {hint}, "
                          f"or set PRUNEKIT_DATA to a directory holding the IDX files")
