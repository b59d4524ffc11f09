"""The fast selection paths (sampled bracket, compiled prune event) against the numpy reference and the
eager path: same masks, same zeros, same state, ties and odd inputs included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import prunekit.torch as pruning  # noqa: E402
from prunekit.core import Unstructured, reference_global_masks, reference_mask  # noqa: E402
from prunekit.core.native import kernels  # noqa: E402
from prunekit.errors import PruningRuntimeError  # noqa: E402
from prunekit.torch import _select  # noqa: E402
from torch_helpers import batches, small_net, train  # noqa: E402


@pytest.fixture
def fast_everywhere(monkeypatch):
    """Every group takes the fast path, however small; counts how often it had to fall back."""
    monkeypatch.setattr(_select, "FAST_MIN", 0)
    calls = {"fast": 0, "exact": 0}
    fast = _select._kept_fast

    def counted_fast(*args):
        out = fast(*args)
        calls["fast" if out is not None else "exact"] += 1
        return out

    monkeypatch.setattr(_select, "_kept_fast", counted_fast)
    return calls


def _weights(kind, shape, rng):
    if kind == "integers":  # many ties
        return rng.integers(-4, 5, size=shape).astype(np.float32)
    if kind == "rounded":
        return np.round(rng.standard_normal(shape), 1).astype(np.float32)
    if kind == "subnormal":
        return (rng.standard_normal(shape) * 1e-40).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@given(st.sampled_from([(64, 64), (32, 16, 3, 3), (4099,)]), st.floats(0.01, 0.99), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "integers", "rounded", "subnormal"]), st.sampled_from([torch.float32, torch.float64]))
@settings(max_examples=60, deadline=None)
def test_fast_path_equals_reference(shape, s, seed, kind, dtype):
    saved = _select.FAST_MIN
    _select.FAST_MIN = 0
    try:
        rng = np.random.default_rng(seed)
        w = torch.tensor(_weights(kind, shape, rng), dtype=dtype)
        ref_in = w.numpy()
        assert np.array_equal(_select.tensor_mask(w, s, Unstructured()).numpy(),
                              reference_mask(ref_in, s, Unstructured()))
        prior = rng.random(shape) > 0.4
        pw = w * torch.tensor(prior)
        assert np.array_equal(_select.tensor_mask(pw, s, Unstructured(), torch.tensor(prior)).numpy(),
                              reference_mask(pw.numpy(), s, Unstructured(), prior))
        if prior.sum() < prior.size:  # a pruned weight that is not zero: the prior still wins
            pw.view(-1)[int(np.flatnonzero(~prior.reshape(-1))[0])] = 100.0
            assert np.array_equal(_select.tensor_mask(pw, s, Unstructured(), torch.tensor(prior)).numpy(),
                                  reference_mask(pw.numpy(), s, Unstructured(), prior))
        ws = [w, w.reshape(-1)[: w.numel() // 3]]
        assert all(np.array_equal(a.numpy(), b) for a, b in
                   zip(_select.global_masks(ws, s), reference_global_masks([x.numpy() for x in ws], s)))
    finally:
        _select.FAST_MIN = saved


def test_fast_path_decides_ordinary_tensors(fast_everywhere):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 300, generator=g)
    mask = _select.tensor_mask(w, 0.9, Unstructured())
    prior = mask.clone()
    w2 = (w + 0.01 * torch.randn(300, 300, generator=g)) * prior
    mask2 = _select.tensor_mask(w2, 0.95, Unstructured(), prior)
    assert fast_everywhere == {"fast": 2, "exact": 0}, "the sampled bracket held the threshold"
    assert int((~mask2).sum()) == int(0.95 * w.numel() + 0.5) and not (mask2 & ~prior).any()


def test_fast_path_rejects_nan(fast_everywhere):
    w = torch.randn(100, 100)
    w[3, 7] = float("nan")
    with pytest.raises(_select.NonFiniteWeights):
        _select.tensor_mask(w, 0.5, Unstructured())


# -- the compiled prune event --------------------------------------------------------------------------
needs_inductor = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is missing")


def _event_pair(monkeypatch, weights_fn, pattern="unstructured", native=True):
    """Two identical SGDSparse optimizers (one eager, one compile_step) on a small net, at an event.
    ``native``: whether the compiled event may use prunekit.core.native's kernels (where they build)."""
    from prunekit.torch.compiled import CompiledPruneEvent
    monkeypatch.setattr(CompiledPruneEvent, "MIN_SIZE", 64)
    out = []
    for compiled in (False, True):
        model = small_net()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(weights_fn(p))
        target = None if pattern == "2:4" else 0.8
        opt = pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9, target_sparsity=target,
                                init_sparsity=0.4, pretrain_step=1, sparse_step=4, frequency=2,
                                compile_step=compiled, pattern=pattern)
        if compiled:
            opt.pruning.compiled_event.native = native
        out.append((model, opt))
    return out


def _snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            [s["momentum_buffer"].clone() for s in (opt.state[p] for p in model.parameters()) if "momentum_buffer" in s],
            {k: v.clone() for k, v in opt.pruning.masks.items()})


@needs_inductor
@pytest.mark.parametrize("kind,pattern", [("normal", "unstructured"), ("integers", "unstructured"),
                                          ("integers", "2:4"), ("integers", "bank8"), ("normal", "bank16"),
                                          ("normal", "block4x4"), ("integers", "block4x4")])
@pytest.mark.parametrize("native", [True, False], ids=["native", "inductor"])
def test_compiled_event_equals_eager_event(monkeypatch, kind, pattern, native):
    if pattern in ("bank16", "block4x4") and not (native and kernels() is not None):
        pytest.skip("banks longer than 8 and blocks have only the native compiled path")
    g = torch.Generator().manual_seed(1)
    if kind == "integers":  # ties at every threshold
        fn = lambda p: torch.randint(-3, 4, p.shape, generator=g).float()  # noqa: E731
    else:
        fn = lambda p: torch.randn(p.shape, generator=g)  # noqa: E731
    (ma, eager), (mb, fused) = _event_pair(monkeypatch, fn, pattern, native)
    for data in batches(3):  # events at steps 1 and 3, with momentum built up in between
        train(ma, eager, [data])
        train(mb, fused, [data])
        # the same weights go into both events, so nothing but the selection path can differ
        with torch.no_grad():
            for p, q in zip(ma.parameters(), mb.parameters()):
                q.copy_(p)
            for p, q in zip(ma.parameters(), mb.parameters()):
                if "momentum_buffer" in eager.state[p]:
                    fused.state[q]["momentum_buffer"].copy_(eager.state[p]["momentum_buffer"])
    for opt in (eager, fused):
        opt.pruning.prune_event()  # a direct event zeroes weights and state at once
    (pa, sa, ka), (pb, sb, kb) = _snapshot(ma, eager), _snapshot(mb, fused)
    assert ka.keys() == kb.keys() and all(torch.equal(ka[n], kb[n]) for n in ka)
    for x, y in zip(pa + sa, pb + sb):
        assert torch.equal(x, y) and torch.equal(torch.signbit(x), torch.signbit(y))
    assert fused.pruning.compiled_event.events >= 1
    native_ran = fused.pruning.compiled_event.native_events >= 1
    assert native_ran == (native and kernels() is not None)


@needs_inductor
@pytest.mark.parametrize("native", [True, False])
def test_compiled_event_leaves_odd_tensors_to_the_eager_path(monkeypatch, native):
    (_, eager), (mb, fused) = _event_pair(monkeypatch, lambda p: torch.randn(p.shape), native=native)
    train(mb, fused, batches(2))  # the event at step 1 ran; masks exist
    name = "6.weight"
    p = dict(mb.named_parameters())[name]
    with torch.no_grad():
        p[~fused.pruning.masks[name]] = 50.0  # pruned weights that are no longer 0
    before = fused.pruning.masks[name].clone()
    fused.pruning.prune_event()
    assert not (fused.pruning.masks[name] & ~before).any(), "what was pruned stays pruned"
    with torch.no_grad():
        p[0, 0] = float("nan")
    with pytest.raises(PruningRuntimeError, match="6.weight"):
        fused.pruning.prune_event()


@needs_inductor
@pytest.mark.skipif(kernels() is None, reason="blocks have only the native compiled path")
def test_compiled_block_event_reports_nan(monkeypatch):
    (_, _), (mb, fused) = _event_pair(monkeypatch, lambda p: torch.randn(p.shape), pattern="block4x4")
    train(mb, fused, batches(2))
    assert fused.pruning.compiled_event.native_events >= 1
    with torch.no_grad():
        dict(mb.named_parameters())["6.weight"][3, 5] = float("nan")
    with pytest.raises(PruningRuntimeError, match="6.weight"):
        fused.pruning.prune_event()


@needs_inductor
def test_compiled_step_keeps_momentum_of_pruned_entries_at_zero(monkeypatch):
    (_, _), (model, fused) = _event_pair(monkeypatch, lambda p: torch.randn(p.shape))
    train(model, fused, batches(6))
    assert fused._prunekit_compiled.fused_steps >= 3
    for name, p in model.named_parameters():
        mask = fused.pruning.masks.get(name)
        if mask is not None:
            assert (p[~mask] == 0).all() and not torch.signbit(p[~mask]).any()
            assert (fused.state[p]["momentum_buffer"][~mask] == 0).all(), name


def test_deferred_event_zeroes_state_before_an_eager_update():
    """An event inside step() waits for the update to zero; the eager update must still see zeroed state."""
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9, target_sparsity=0.5, pretrain_step=2)
    train(model, opt, batches(2))
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    train(model, opt, batches(1, seed=3))  # event at step 2, then the update
    for name, p in model.named_parameters():
        if name in opt.pruning.masks:
            pruned = ~opt.pruning.masks[name]
            # momentum = 0.9 * (zeroed buffer) + grad on pruned entries: nothing carried from before
            assert torch.allclose(opt.state[p]["momentum_buffer"][pruned], p.grad[pruned]), name
            assert not torch.equal(bufs[name][pruned], p.grad[pruned])


def test_compiled_event_leaves_mixed_previous_masks_to_the_eager_path():
    from prunekit.torch.compiled import CompiledPruneEvent
    w, mask = torch.zeros(4), torch.ones(4, dtype=torch.bool)
    assert CompiledPruneEvent._priors([(w, 1, None, []), (w, 1, None, [])]) is None
    assert CompiledPruneEvent._priors([(w, 1, mask, []), (w, 1, mask, [])]) == [mask, mask]
    assert CompiledPruneEvent._priors([(w, 1, mask, []), (w, 1, None, [])]) is False
