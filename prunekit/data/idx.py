"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or not). numpy only."""

import gzip
import os
import struct

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["read_idx"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file into a numpy array (its dims from the header).

    Raises:
        ConfigError: the file is not IDX, or is shorter than its header says.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ConfigError(f"{os.fspath(path)!r} is not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset < expected:
        raise ConfigError(f"{os.fspath(path)!r} is truncated: header says {dims} ({expected} bytes of data), "
                          f"file has {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(dims)), offset=offset).reshape(dims).astype(
        dtype.newbyteorder("="))
