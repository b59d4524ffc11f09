"""A small reader and writer of the safetensors format (numpy + stdlib), with strict validation.

The format: 8 bytes little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the raw little-endian bytes. Files
written here load with the ``safetensors`` package and the other way round. Tensors are passed as
``(dtype_name, shape, bytes)`` so that dtypes numpy lacks (BF16) travel unchanged.

Nothing is executed or unpickled while reading. The header is read and checked in full against the
file's size before any tensor's bytes are read, so a damaged header never makes the reader allocate
what it claims; every inconsistency (a short file, a shape that is not a list of non-negative integers,
offsets outside the data, overlapping or unused bytes, a size that does not match dtype x shape)
raises ``FormatError`` naming the file. Writing goes through a unique temporary file in the same
directory, fsynced and renamed over the destination (:mod:`prunekit.io.atomic`).
"""

import json
import os
import struct

from prunekit.errors import ConfigError
from prunekit.io.atomic import atomic_open

__all__ = ["read_safetensors", "write_safetensors", "FormatError", "ITEMSIZE"]

ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
            "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024


class FormatError(ConfigError):
    """A file is not a valid safetensors file (truncated, corrupted, or inconsistent)."""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _nbytes(dtype, shape):
    size = ITEMSIZE[dtype]
    for d in shape:
        size *= d
    return size


def write_safetensors(path, tensors, metadata=None):
    """Write ``{name: (dtype, shape, bytes)}`` and string ``metadata`` atomically.

    Everything is checked before the file is opened; on any error the destination is left as it was
    and no temporary file remains.
    """
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} cannot be stored (a string other than '__metadata__')")
        if dtype not in ITEMSIZE:
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not a safetensors dtype; accepted: "
                             f"{', '.join(ITEMSIZE)}")
        if not all(_is_count(d) for d in shape):
            raise ValueError(f"tensor {name!r}: shape {list(shape)} must be non-negative integers")
        expected = _nbytes(dtype, shape)
        if len(data) != expected:
            raise ValueError(f"tensor {name!r}: {len(data)} bytes for {dtype} {list(shape)} (needs {expected})")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
    with atomic_open(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, data in tensors.values():
            f.write(data)


def _read_header(f, where, file_size):
    if file_size < 8:
        raise FormatError(f"{where!r} is not a safetensors file: {file_size} bytes")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER or 8 + n > file_size:
        raise FormatError(f"{where!r} is truncated or not a safetensors file (header of {n} bytes, file of "
                          f"{file_size})")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where!r} has a corrupted header: {e}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where!r} has a corrupted header (not a JSON object)")
    return header, 8 + n


def _check_entry(where, name, entry, data_size):
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{where!r}: header entry {name!r} is malformed (needs exactly dtype, shape, "
                          "data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise FormatError(f"{where!r}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise FormatError(f"{where!r}: tensor {name!r} has shape {shape!r}; a shape is a list of non-negative "
                          "integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise FormatError(f"{where!r}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    size = _nbytes(dtype, shape)
    if not begin <= end <= data_size or end - begin != size:
        raise FormatError(f"{where!r} is truncated or corrupted: tensor {name!r} ({dtype} {shape}) needs bytes "
                          f"[{begin}, {end}) of {data_size}")
    return dtype, tuple(shape), begin, end


def read_safetensors(path):
    """Read a safetensors file: ``({name: (dtype, shape, bytes)}, metadata)``; ``FormatError`` if invalid."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header, start = _read_header(f, where, file_size)
        metadata = header.pop("__metadata__", {}) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise FormatError(f"{where!r}: __metadata__ must map strings to strings")
        data_size = file_size - start
        entries = {name: _check_entry(where, name, entry, data_size) for name, entry in header.items()}
        position = 0
        for _, _, begin, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
            if begin != position:
                raise FormatError(f"{where!r} is corrupted: tensor data overlaps or leaves a gap at byte {position}")
            position = end
        if position != data_size:
            raise FormatError(f"{where!r} is corrupted: {data_size - position} bytes after the last tensor")
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():  # every check passed: now read the bytes
            f.seek(start + begin)
            data = f.read(end - begin)
            if len(data) != end - begin:
                raise FormatError(f"{where!r} was truncated while being read (tensor {name!r})")
            tensors[name] = (dtype, shape, data)
    return tensors, metadata
