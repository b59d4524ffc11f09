"""A zoo entry as one file: an IR graph plus its weights, sparse-compressed (numpy + stdlib).

The file is a ``prunekit.torch.save_sparse`` file (safetensors; each tensor stored dense, as a bitmask
plus the non-zero values, or as int32 indices plus values, whichever is smallest, with a CRC32 of its
dense bytes), so ``prunekit.torch.load_sparse`` reads it too. The graph travels in the header's
metadata under ``prunekit.ir`` (prunekit's versioned IR document), the entry's description under
``prunekit.zoo``. Everything here is numpy: any framework's builder can start from it.
"""

import json
import zlib

import numpy as np

from prunekit.io.safetensors import FormatError, read_safetensors, write_safetensors

__all__ = ["pack", "unpack", "graph_document"]

_FORMAT_VERSION = 1  # that of prunekit.torch.sparse_io
_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _NUMPY.items()}
_VALUES, _BITMASK, _INDICES, _NEGZERO = ".__values__", ".__bitmask__", ".__indices__", ".__negzero__"


def graph_document(graph):
    """prunekit's versioned IR document (what ``ir.save`` writes) of ``graph``, as a dict."""
    from prunekit.ir import FORMAT_VERSION
    graph.validate()
    return {"format_version": FORMAT_VERSION,
            "inputs": [{"node_id": i, "node_type": "Var", "op_type": "Const", "shape": list(s)}
                       for i, s in graph.inputs.items()],
            "nodes": [n.to_json() for n in graph.nodes.values()], "outputs": list(graph.outputs)}


def _encode(name, array):
    array = np.ascontiguousarray(array)
    if array.dtype not in _NAMES:
        raise FormatError(f"cannot store weight {name!r} of dtype {array.dtype}; supported: "
                          f"{', '.join(str(np.dtype(d)) for d in _NUMPY.values())}")
    dtype, flat = _NAMES[array.dtype], array.reshape(-1)
    desc = {"dtype": dtype, "shape": list(array.shape), "crc32": zlib.crc32(flat.tobytes()), "encoding": "dense"}
    if array.dtype.kind != "f":
        return {name: (dtype, list(array.shape), flat.tobytes())}, desc
    nonzero = flat != 0  # NaN counts as a value
    negative_zero = np.signbit(flat) & ~nonzero
    extra = (int((~nonzero).sum()) + 7) // 8 if negative_zero.any() else 0
    n, nnz, e = flat.size, int(nonzero.sum()), flat.itemsize
    sizes = {"dense": n * e, "bitmask": (n + 7) // 8 + nnz * e + extra, "indices": nnz * (4 + e) + extra}
    desc["encoding"] = min(sizes, key=lambda k: (sizes[k], k))
    if desc["encoding"] == "dense":
        return {name: (dtype, list(array.shape), flat.tobytes())}, desc
    entries = {name + _VALUES: (dtype, [nnz], flat[nonzero].tobytes())}
    if extra:
        bits = np.packbits(negative_zero[~nonzero], bitorder="little")
        entries[name + _NEGZERO] = ("U8", [len(bits)], bits.tobytes())
    if desc["encoding"] == "bitmask":
        bits = np.packbits(nonzero, bitorder="little")
        entries[name + _BITMASK] = ("U8", [len(bits)], bits.tobytes())
    else:
        entries[name + _INDICES] = ("I32", [nnz], np.flatnonzero(nonzero).astype("<i4").tobytes())
    return entries, desc


def pack(graph, path, description=None):
    """Write ``graph`` (its nodes and weights) to ``path``; ``description`` (a dict) goes in the header.

    Returns the file's size in bytes.
    """
    entries, described = {}, {}
    for name in sorted(graph.weights):
        tensor_entries, described[name] = _encode(name, graph.weights[name])
        entries.update(tensor_entries)
    meta = {"prunekit": json.dumps({"format": "prunekit.sparse", "format_version": _FORMAT_VERSION,
                                    "tensors": described}, separators=(",", ":")),
            "prunekit.ir": json.dumps(graph_document(graph), separators=(",", ":"))}
    if description is not None:
        meta["prunekit.zoo"] = json.dumps(description, sort_keys=True)
    write_safetensors(path, entries, meta)
    import os
    return os.path.getsize(path)


def _decode(name, desc, entries, where):
    dtype = _NUMPY.get(desc.get("dtype"))
    if dtype is None:
        raise FormatError(f"{where!r}: weight {name!r} has dtype {desc.get('dtype')!r}, which numpy cannot hold")
    shape = tuple(desc.get("shape", ()))
    n = int(np.prod(shape)) if shape else 1

    def entry(key, want):
        if key not in entries or entries[key][0] != want:
            raise FormatError(f"{where!r} is corrupted: entry {key!r} is missing or has the wrong dtype")
        return np.frombuffer(entries[key][2], dtype=_NUMPY[want])
    encoding = desc.get("encoding")
    if encoding == "dense":
        flat = entry(name, desc["dtype"]).copy()
    elif encoding in ("bitmask", "indices"):
        values = entry(name + _VALUES, desc["dtype"])
        flat = np.zeros(n, dtype)
        if encoding == "bitmask":
            nonzero = np.unpackbits(entry(name + _BITMASK, "U8"), count=n, bitorder="little").astype(bool)
            if int(nonzero.sum()) != len(values):
                raise FormatError(f"{where!r} is corrupted: the bitmask of {name!r} does not match its values")
            flat[nonzero] = values
        else:
            index = entry(name + _INDICES, "I32").astype(np.int64)
            if len(index) != len(values) or len(index) and (index.min() < 0 or index.max() >= n):
                raise FormatError(f"{where!r} is corrupted: the indices of {name!r} do not fit its {n} elements")
            flat[index] = values
        if name + _NEGZERO in entries:
            zeros = np.flatnonzero(flat == 0)
            signs = np.unpackbits(entry(name + _NEGZERO, "U8"), count=len(zeros), bitorder="little").astype(bool)
            flat[zeros[signs]] = -0.0
    else:
        raise FormatError(f"{where!r}: weight {name!r} has unknown encoding {encoding!r}")
    if flat.size != n or zlib.crc32(flat.tobytes()) != desc.get("crc32"):
        raise FormatError(f"{where!r} is corrupted: weight {name!r} fails its checksum")
    return flat.reshape(shape)


def unpack(path):
    """``(graph document, {weight name: array}, description or None)`` from a file :func:`pack` wrote."""
    entries, meta = read_safetensors(path)
    try:
        tensors = json.loads(meta["prunekit"])["tensors"]
        document = json.loads(meta["prunekit.ir"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise FormatError(f"{path!r} is not a prunekit zoo file (no 'prunekit' and 'prunekit.ir' metadata)") from None
    weights = {name: _decode(name, desc, entries, path) for name, desc in tensors.items()}
    description = json.loads(meta["prunekit.zoo"]) if "prunekit.zoo" in meta else None
    return document, weights, description
