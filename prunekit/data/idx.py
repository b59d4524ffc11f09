"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or not). numpy only."""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["read_idx"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file into a numpy array (its dims from the header).

    Raises:
        ConfigError: the file is not IDX, or its size is not what its header says.
    """
    where = os.fspath(path)
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz fails while it is read
        raise ConfigError(f"{where!r} cannot be read as an IDX file: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ConfigError(f"{where!r} is not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ConfigError(f"{where!r} is truncated inside its header: {ndim} dimensions need {offset} bytes, "
                          f"the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(data) - offset != expected:
        state = "truncated" if len(data) - offset < expected else "longer than its header says"
        raise ConfigError(f"{where!r} is {state}: header says {dims} ({expected} bytes of data), "
                          f"file has {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims).astype(
        dtype.newbyteorder("="))
