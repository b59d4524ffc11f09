"""A small reader and writer of the safetensors format (numpy + stdlib), with strict validation.

The format: 8 bytes little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the raw little-endian bytes. Files
written here load with the ``safetensors`` package and the other way round. Tensors are passed as
``(dtype_name, shape, bytes)`` so that dtypes numpy lacks (BF16) travel unchanged.

Nothing is executed or unpickled while reading; every inconsistency (short file, offsets outside the
data, overlapping or unused bytes, a size that does not match dtype x shape) raises ``FormatError``.
"""

import json
import os
import struct

from prunekit.errors import ConfigError

__all__ = ["read_safetensors", "write_safetensors", "FormatError", "ITEMSIZE"]

ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
            "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024


class FormatError(ConfigError):
    """A file is not a valid safetensors file (truncated, corrupted, or inconsistent)."""


def write_safetensors(path, tensors, metadata=None):
    """Write ``{name: (dtype, shape, bytes)}`` and string ``metadata`` atomically (temp file + rename)."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        expected = ITEMSIZE[dtype]
        for d in shape:
            expected *= d
        if len(data) != expected:
            raise ValueError(f"tensor {name!r}: {len(data)} bytes for {dtype} {list(shape)} (needs {expected})")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, data in tensors.values():
            f.write(data)
    os.replace(tmp, path)


def read_safetensors(path):
    """Read a safetensors file: ``({name: (dtype, shape, bytes)}, metadata)``; ``FormatError`` if invalid."""
    with open(path, "rb") as f:
        blob = f.read()
    where = os.fspath(path)
    if len(blob) < 8:
        raise FormatError(f"{where!r} is not a safetensors file: {len(blob)} bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise FormatError(f"{where!r} is truncated or not a safetensors file (header of {n} bytes, file of {len(blob)})")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where!r} has a corrupted header: {e}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where!r} has a corrupted header (not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n:]
    spans, tensors = [], {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{where!r}: header entry {name!r} is malformed") from None
        if dtype not in ITEMSIZE:
            raise FormatError(f"{where!r}: tensor {name!r} has unknown dtype {dtype!r}")
        size = ITEMSIZE[dtype]
        for d in shape:
            size *= d
        if not (0 <= begin <= end <= len(data)) or end - begin != size:
            raise FormatError(f"{where!r} is truncated or corrupted: tensor {name!r} ({dtype} {shape}) needs bytes "
                              f"[{begin}, {end}) of {len(data)}")
        spans.append((begin, end))
        tensors[name] = (dtype, tuple(shape), bytes(data[begin:end]))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise FormatError(f"{where!r} is corrupted: tensor data overlaps or leaves a gap at byte {position}")
        position = end
    if position != len(data):
        raise FormatError(f"{where!r} is corrupted: {len(data) - position} bytes after the last tensor")
    return tensors, metadata
