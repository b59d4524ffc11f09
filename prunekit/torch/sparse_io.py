"""Compressed sparse checkpoints: files that really shrink, and load back bit for bit.

``save_sparse(model, path)`` writes a safetensors file in which each tensor is stored the smallest of
three ways: *dense* (its bytes), *bitmask* (one bit per element saying "non-zero", then the non-zero
values), or *indices* (int32 flat positions of the non-zeros, then their values). NaN is a value like
any other; a ``-0.0`` (which ``w * mask`` leaves for negative weights) is kept exactly with one extra
bit per zero, so the reload is bit-identical. prunekit's optimizers always leave ``+0.0``. Each tensor carries a CRC32 of its dense bytes; the whole file is decoded and checked
before anything is copied into a model, so a corrupted or truncated file never half-loads one.

At 95% sparsity a bitmask costs 1/32 of the fp32 bytes plus 5% for the values: about 8% of dense.
Masks for ``restore_sparsity`` are the non-zero pattern, which the file keeps exactly.
"""

import json
import math
import os
import zlib

import numpy as np
import torch

from prunekit.errors import ConfigError
from prunekit.io.safetensors import FormatError, read_safetensors, write_safetensors

__all__ = ["save_sparse", "load_sparse", "strip", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_TORCH = {v: k for k, v in _DTYPES.items()}
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_VALUES, _BITMASK, _INDICES, _NEGZERO = ".__values__", ".__bitmask__", ".__indices__", ".__negzero__"


def _raw(t):
    """The tensor's bytes (little-endian, C order) without going through dtypes numpy lacks."""
    t = t.detach().contiguous().cpu()
    return t.view(_SAME_SIZE_INT[t.element_size()]).numpy().tobytes() if t.dtype != torch.bool else \
        t.numpy().tobytes()


def _from_raw(data, dtype, shape):
    itype = _SAME_SIZE_INT[torch.empty(0, dtype=dtype).element_size()] if dtype != torch.bool else torch.bool
    flat = torch.frombuffer(bytearray(data), dtype=itype) if data else torch.empty(0, dtype=itype)
    return flat.view(dtype).reshape(shape) if dtype != torch.bool else flat.reshape(shape)


def _encode(name, t):
    """Entries and description of one tensor, in whichever encoding is smallest."""
    t = t.detach().contiguous().cpu()
    if t.dtype not in _DTYPES:
        raise ConfigError(f"save_sparse cannot store {name!r} of dtype {t.dtype}; supported: "
                          f"{', '.join(str(d) for d in _DTYPES)}")
    dtype, n, e = _DTYPES[t.dtype], t.numel(), t.element_size()
    desc = {"dtype": dtype, "shape": list(t.shape), "crc32": zlib.crc32(_raw(t))}
    flat = t.reshape(-1)
    nonzero = flat != 0  # NaN is a value too
    nnz = int(nonzero.sum()) if t.is_floating_point() else n
    negzero = None
    if t.is_floating_point():
        signed = (flat.view(_SAME_SIZE_INT[e]) != 0) & ~nonzero  # -0.0: kept exactly, one bit per zero
        negzero = np.packbits(signed[~nonzero].numpy(), bitorder="little") if bool(signed.any()) else None
    extra = 0 if negzero is None else len(negzero)
    sizes = {"dense": n * e, "bitmask": (n + 7) // 8 + nnz * e + extra,
             "indices": nnz * (4 + e) + extra if n < 2**31 else None}
    best = min((s, k) for k, s in sizes.items() if s is not None)[1] if t.is_floating_point() else "dense"
    desc["encoding"] = best
    if best == "dense":
        return {name: (dtype, list(t.shape), _raw(t))}, desc
    values = flat[nonzero]
    entries = {name + _VALUES: (dtype, [nnz], _raw(values))}
    if negzero is not None:
        entries[name + _NEGZERO] = ("U8", [len(negzero)], negzero.tobytes())
    if best == "bitmask":
        bits = np.packbits(nonzero.numpy(), bitorder="little")
        entries[name + _BITMASK] = ("U8", [len(bits)], bits.tobytes())
    else:
        idx = torch.nonzero(nonzero).reshape(-1).to(torch.int32)
        entries[name + _INDICES] = ("I32", [nnz], _raw(idx))
    return entries, desc


def save_sparse(model, path):
    """Write ``model`` (an ``nn.Module`` or a state_dict) to ``path`` as a compressed safetensors file.

    Returns:
        ``{"bytes": file size, "dense_bytes": size of the raw tensors, "encodings": {name: encoding}}``.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    if not isinstance(state, dict):
        raise ConfigError(f"save_sparse needs an nn.Module or a state_dict; got {type(model).__name__}")
    entries, described = {}, {}
    for name, t in state.items():
        if not torch.is_tensor(t):
            raise ConfigError(f"save_sparse: state entry {name!r} is a {type(t).__name__}, not a tensor")
        if name.endswith((_VALUES, _BITMASK, _INDICES, _NEGZERO)):
            raise ConfigError(f"save_sparse: the name {name!r} ends with a suffix the format reserves")
        tensor_entries, described[name] = _encode(name, t)
        entries.update(tensor_entries)
    meta = {"format": "prunekit.sparse", "format_version": FORMAT_VERSION, "tensors": described}
    write_safetensors(path, entries, {"prunekit": json.dumps(meta, separators=(",", ":"))})
    dense = sum(t.numel() * t.element_size() for t in state.values())
    return {"bytes": os.path.getsize(path), "dense_bytes": dense,
            "encodings": {k: v["encoding"] for k, v in described.items()}}


def _fail(where, message):
    raise FormatError(f"{where!r} is corrupted: {message}")


def _check_desc(name, desc, entries, where):
    """The description of one tensor, checked against the entries it points to before anything is allocated.

    Returns ``(torch dtype, shape, element count)``. The bytes of every entry are already known to be in the
    file (``read_safetensors`` checked them), so a bitmask or a dense entry bounds the element count by the
    file's size; the indices encoding stores int32 positions, which bounds it by ``2**31``.
    """
    if not isinstance(name, str) or not isinstance(desc, dict):
        _fail(where, f"the description of tensor {name!r} is not an object")
    missing = [k for k in ("dtype", "shape", "encoding", "crc32") if k not in desc]
    if missing:
        _fail(where, f"tensor {name!r} lacks {missing} in its description")
    dtype, shape, encoding, crc = desc["dtype"], desc["shape"], desc["encoding"], desc["crc32"]
    if not isinstance(dtype, str) or dtype not in _TORCH:
        _fail(where, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        _fail(where, f"tensor {name!r} has shape {shape!r}; a shape is a list of non-negative integers")
    if not isinstance(crc, int) or isinstance(crc, bool) or not 0 <= crc < 2**32:
        _fail(where, f"tensor {name!r} has checksum {crc!r}")
    n = math.prod(shape)

    def entry(suffix, want_dtype, count=None):
        key = name + suffix
        if key not in entries or entries[key][0] != want_dtype or len(entries[key][1]) != 1 and suffix:
            _fail(where, f"entry {key!r} is missing, or has the wrong dtype or rank")
        got = entries[key][1][0] if suffix else None
        if count is not None and got != count:
            _fail(where, f"entry {key!r} has {got} elements; tensor {name!r} {shape} needs {count}")
        return got
    if encoding == "dense":
        entry("", dtype)
        if list(entries[name][1]) != shape:
            _fail(where, f"tensor {name!r} is stored with shape {list(entries[name][1])}, described as {shape}")
    elif encoding in ("bitmask", "indices"):
        if encoding == "bitmask":
            entry(_BITMASK, "U8", (n + 7) // 8)
        elif n >= 2**31:
            _fail(where, f"tensor {name!r} {shape} has {n} elements; int32 indices address fewer than 2**31")
        nnz = entry(_VALUES, dtype)
        if encoding == "indices":
            entry(_INDICES, "I32", nnz)
        if nnz > n:
            _fail(where, f"tensor {name!r} {shape} has {nnz} stored values for {n} elements")
        if name + _NEGZERO in entries:
            entry(_NEGZERO, "U8", (n - nnz + 7) // 8)
    else:
        _fail(where, f"tensor {name!r} has unknown encoding {encoding!r}")
    return _TORCH[dtype], tuple(shape), n


def _decode(name, desc, entries, where):
    dtype, shape, n = _check_desc(name, desc, entries, where)
    encoding = desc["encoding"]
    if encoding == "dense":
        t = _from_raw(entries[name][2], dtype, shape)
    else:
        _, (nnz,), values = entries[name + _VALUES]
        flat = torch.zeros(n, dtype=dtype)
        if encoding == "bitmask":
            packed = entries[name + _BITMASK][2]
            nonzero = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n, bitorder="little").astype(bool)
            if int(nonzero.sum()) != nnz:
                _fail(where, f"the bitmask of {name!r} does not match its values")
            flat[torch.from_numpy(nonzero)] = _from_raw(values, dtype, (nnz,))
        else:
            idx = _from_raw(entries[name + _INDICES][2], torch.int32, (nnz,)).to(torch.int64)
            if nnz and (int(idx.min()) < 0 or int(idx.max()) >= n):
                _fail(where, f"indices of {name!r} fall outside its {n} elements")
            flat[idx] = _from_raw(values, dtype, (nnz,))
        if name + _NEGZERO in entries:
            packed = entries[name + _NEGZERO][2]
            zeros = torch.nonzero(flat == 0).reshape(-1)
            if len(packed) != (len(zeros) + 7) // 8:
                _fail(where, f"the negative-zero bits of {name!r} do not match its zeros")
            signs = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=len(zeros), bitorder="little")
            flat[zeros[torch.from_numpy(signs.astype(bool))]] = -0.0
        t = flat.reshape(shape)
    if zlib.crc32(_raw(t)) != desc["crc32"]:
        _fail(where, f"tensor {name!r} fails its checksum")
    return t


def _read_meta(path, metadata):
    try:
        meta = json.loads(metadata["prunekit"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise FormatError(f"{path!r} is not a prunekit sparse checkpoint (no readable 'prunekit' metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != "prunekit.sparse":
        raise FormatError(f"{path!r} is not a prunekit sparse checkpoint (its metadata is not prunekit.sparse)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{path!r} has format version {meta.get('format_version')!r}; this prunekit reads "
                          f"{FORMAT_VERSION}")
    if not isinstance(meta.get("tensors"), dict):
        raise FormatError(f"{path!r} is corrupted: its metadata has no 'tensors' object")
    return meta["tensors"]


def load_sparse(path, model=None, map_location="cpu"):
    """Load a file written by :func:`save_sparse`: the dense state_dict, or ``model`` with it loaded.

    The whole file is decoded and verified first; keys and shapes are checked against ``model``
    before any weight is copied, so an error never leaves a model half-loaded.
    """
    path = os.fspath(path)
    entries, metadata = read_safetensors(path)
    described = _read_meta(path, metadata)
    for name, desc in described.items():  # every description checked before any tensor is allocated
        _check_desc(name, desc, entries, path)
    state = {name: _decode(name, desc, entries, path).to(map_location) for name, desc in described.items()}
    if model is None:
        return state
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(f"{path!r} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}, shape mismatch {wrong[:5]}")
    model.load_state_dict(state)
    return model


def strip(checkpoint):
    """Pruning state removed, for people who only want weights (or a plain torch optimizer).

    Args:
        checkpoint: an optimizer ``state_dict()`` (its ``prunekit_*`` entries, and the ``"prunekit"`` entry
            of checkpoints from before 0.2, are dropped, so ``torch.optim.SGD.load_state_dict`` takes it), or a ``prunekit train`` checkpoint (its
            model ``state_dict`` is returned), or a model ``state_dict`` (returned as is).
    """
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"strip needs a dict (a state_dict or a checkpoint); got {type(checkpoint).__name__}")
    if "state" in checkpoint and "param_groups" in checkpoint:
        state = {k: {key: value for key, value in v.items() if not key.startswith("prunekit_")}
                 for k, v in checkpoint["state"].items() if k != "prunekit" and isinstance(v, dict)}
        groups = [{k: v for k, v in g.items() if not k.startswith("prunekit_")} for g in checkpoint["param_groups"]]
        return {"state": {k: v for k, v in state.items() if v}, "param_groups": groups}
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return dict(checkpoint["model"])
    if all(torch.is_tensor(v) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ConfigError("strip: not an optimizer state_dict, a prunekit checkpoint or a model state_dict")
