"""Compressed sparse checkpoints: exact reloads, real size savings, clear errors on damaged files."""

import io
import os

import pytest

torch = pytest.importorskip("torch")

import prunekit.torch as pruning  # noqa: E402
from prunekit.io.safetensors import FormatError  # noqa: E402
from torch_helpers import batches, small_net, train  # noqa: E402


def sparse_tensor(shape, sparsity, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(dtype)
    t[torch.rand(shape, generator=g) < sparsity] = 0
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99, 1.0])
def test_reload_is_bit_identical(tmp_path, dtype, sparsity):
    state = {"w": sparse_tensor((64, 33), sparsity, dtype), "b": sparse_tensor((7,), sparsity, dtype, 1),
             "steps": torch.tensor(5), "flag": torch.tensor([True, False])}
    state["w"][0, 0] = -0.0  # a negative zero is a value: it must come back as -0.0
    state["w"][0, 1] = float("nan")
    pruning.save_sparse(state, tmp_path / "s.safetensors")
    back = pruning.load_sparse(tmp_path / "s.safetensors")
    assert back.keys() == state.keys()
    for k in state:
        assert back[k].dtype == state[k].dtype and back[k].shape == state[k].shape
        a, b = state[k].contiguous(), back[k]
        if a.is_floating_point():
            a, b = a.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]), \
                b.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[b.element_size()])
        assert torch.equal(a, b), k


def test_size_targets(tmp_path):
    big = {"w": torch.randn(512, 1024)}
    plain = io.BytesIO()
    torch.save(big, plain)
    info = pruning.save_sparse(big, tmp_path / "dense.safetensors")
    assert info["bytes"] <= plain.tell(), "at 0% the file is no larger than a plain state_dict"
    w = big["w"].clone()
    w.view(-1)[torch.randperm(w.numel())[: int(0.95 * w.numel())]] = 0  # exactly 95% zeros
    info = pruning.save_sparse({"w": w}, tmp_path / "sparse.safetensors")
    assert info["encodings"]["w"] == "bitmask"
    assert info["bytes"] <= 0.09 * plain.tell()


def test_very_sparse_tensors_use_indices(tmp_path):
    w = torch.zeros(1000, 100)
    w[3, 7] = 1.5
    info = pruning.save_sparse({"w": w}, tmp_path / "x.safetensors")
    assert info["encodings"]["w"] == "indices"
    assert torch.equal(pruning.load_sparse(tmp_path / "x.safetensors")["w"], w)


def test_readable_by_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    w = sparse_tensor((16, 16), 0.0, torch.float32)
    pruning.save_sparse({"w": w}, tmp_path / "d.safetensors")
    assert torch.equal(st.load_file(str(tmp_path / "d.safetensors"))["w"], w)


def trained_model():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=0.9, sparse_step=0)
    train(model, opt, batches(2))
    return model


def damaged_files(path):
    blob = open(path, "rb").read()
    yield "truncated", blob[: len(blob) // 2]
    yield "truncated header", blob[:20]
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    yield "flipped byte", bytes(flipped)
    yield "empty", b""
    yield "junk", b"not a checkpoint at all" * 10


def test_damaged_files_fail_clearly_and_never_half_load(tmp_path):
    model = trained_model()
    path = tmp_path / "m.safetensors"
    pruning.save_sparse(model, path)
    target = small_net(seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for label, blob in damaged_files(path):
        bad = tmp_path / f"bad-{label.replace(' ', '-')}"
        bad.write_bytes(blob)
        with pytest.raises(FormatError) as info:
            pruning.load_sparse(bad, target)
        assert str(bad) in str(info.value), label
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), label


def test_model_round_trip_and_restore_sparsity(tmp_path):
    model = trained_model()
    pruning.save_sparse(model, tmp_path / "m.safetensors")
    fresh = pruning.load_sparse(tmp_path / "m.safetensors", small_net(seed=3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    opt = pruning.SGDSparse(fresh.named_parameters(), lr=0.1, restore_sparsity=True, fix_sparsity=True)
    train(fresh, opt, batches(2, seed=4))
    assert opt.sparsity()[1] == pytest.approx(0.9, abs=0.01)


def test_load_into_wrong_model_is_refused_before_copying(tmp_path):
    pruning.save_sparse({"weight": torch.zeros(3, 3)}, tmp_path / "w.safetensors")
    target = torch.nn.Linear(4, 3)
    before = target.weight.clone()
    with pytest.raises(ValueError, match="does not fit Linear"):
        pruning.load_sparse(tmp_path / "w.safetensors", target)
    assert torch.equal(target.weight, before)


def test_strip():
    model = trained_model()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=0.5)
    train(model, opt, batches(1))
    plain = pruning.strip(opt.state_dict())
    assert not any(k.startswith("prunekit") for s in plain["state"].values() for k in s)
    assert not any(k.startswith("prunekit") for g in plain["param_groups"] for k in g)
    assert all("momentum_buffer" in s for s in plain["state"].values())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.load_state_dict(plain)
    assert sgd.state_dict()["param_groups"] == plain["param_groups"]
    assert pruning.strip({"model": model.state_dict(), "optimizers": {}}).keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="strip needs a dict"):
        pruning.strip([1, 2])


def test_file_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails at its last moment (fsync: disk full) leaves the old file whole and no temporary."""
    import prunekit.io.atomic
    path = tmp_path / "a.safetensors"
    pruning.save_sparse({"w": torch.ones(2)}, path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prunekit.io.atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pruning.save_sparse({"w": torch.arange(1000.0)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]
    assert torch.equal(pruning.load_sparse(path)["w"], torch.ones(2))


def test_concurrent_writers_use_their_own_temporary_files(tmp_path, monkeypatch):
    """Two writers of one path never share a temporary name (the old code used PATH.tmp for both)."""
    import prunekit.io.atomic
    names = []
    real = prunekit.io.atomic.os.replace

    def record(src, dst):
        names.append(os.path.basename(src))
        return real(src, dst)
    monkeypatch.setattr(prunekit.io.atomic.os, "replace", record)
    for _ in range(2):
        pruning.save_sparse({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    assert len(set(names)) == 2 and all(n.startswith(".a.safetensors.") for n in names)


def damaged_metadata(tmp_path, change):
    import json
    from prunekit.io.safetensors import read_safetensors, write_safetensors
    w = torch.zeros(64, 8)
    w[0, :3] = 1.0
    w[5, 1] = 2.0
    pruning.save_sparse({"w": w, "d": torch.ones(3)}, tmp_path / "ok.safetensors")
    entries, metadata = read_safetensors(tmp_path / "ok.safetensors")
    meta = json.loads(metadata["prunekit"])
    change(meta)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, entries, {"prunekit": json.dumps(meta)})
    return bad


@pytest.mark.parametrize("label,change", [
    ("huge shape", lambda m: m["tensors"]["w"].update(shape=[10**13])),
    ("huge shape (bitmask)", lambda m: m["tensors"]["w"].update(shape=[10**13], encoding="bitmask")),
    ("overflowing shape", lambda m: m["tensors"]["w"].update(shape=[2**40, 2**40])),
    ("negative dimension", lambda m: m["tensors"]["w"].update(shape=[-64, 8])),
    ("float dimension", lambda m: m["tensors"]["w"].update(shape=[64.0, 8])),
    ("shape as text", lambda m: m["tensors"]["w"].update(shape="64x8")),
    ("missing key", lambda m: m["tensors"]["w"].pop("encoding")),
    ("missing crc", lambda m: m["tensors"]["d"].pop("crc32")),
    ("unknown dtype", lambda m: m["tensors"]["d"].update(dtype="Q7")),
    ("dense shape differs", lambda m: m["tensors"]["d"].update(shape=[4])),
    ("tensors not an object", lambda m: m.update(tensors=[1, 2])),
    ("description not an object", lambda m: m["tensors"].update(w=3)),
    ("not prunekit's", lambda m: m.update(format="other")),
])
def test_damaged_metadata_is_a_format_error_naming_the_file(tmp_path, label, change):
    bad = damaged_metadata(tmp_path, change)
    with pytest.raises(FormatError, match="bad.safetensors"):
        pruning.load_sparse(bad)


@pytest.mark.parametrize("shape", [[-1, 4], [2.5, 4], [True, 4], "4"])
def test_safetensors_reader_refuses_bad_shapes(tmp_path, shape):
    """Shapes the safetensors package refuses (negative, float, bool, text) are refused here too."""
    import json
    import struct
    from prunekit.io.safetensors import read_safetensors
    header = json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(FormatError, match=r"s\.safetensors.*shape"):
        read_safetensors(path)


def test_files_of_the_safetensors_package_read_here(tmp_path):
    """The reader and the package agree both ways (the package's numpy writer, prunekit's reader)."""
    st = pytest.importorskip("safetensors.numpy")
    import numpy as np
    from prunekit.io.safetensors import read_safetensors
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros((0, 5), np.int64),
              "c": np.array(7, dtype=np.float16)}
    st.save_file(arrays, str(tmp_path / "p.safetensors"), metadata={"k": "v"})
    tensors, metadata = read_safetensors(tmp_path / "p.safetensors")
    assert metadata == {"k": "v"}
    for name, array in arrays.items():
        dtype, shape, data = tensors[name]
        assert shape == array.shape and np.array_equal(np.frombuffer(data, array.dtype).reshape(shape), array)
