"""prunekit.core.native: the C kernels of the unstructured prune event give the reference's masks (ties,
subnormals, previous masks included), hand back what they cannot decide, and fail to build loudly."""

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core import NM, BankBalanced, Block, Unstructured, native, reference_mask
from prunekit.core.masks import prune_count, to_scores

needs_kernels = pytest.mark.skipif(native.kernels() is None,
                                   reason="no AVX2 CPU or C compiler here (or PRUNEKIT_NATIVE=0)")


def _weights(kind, n, rng):
    if kind == "integers":  # ties at every threshold
        return rng.integers(-4, 5, size=n).astype(np.float32)
    if kind == "rounded":
        return np.round(rng.standard_normal(n), 1).astype(np.float32)
    if kind == "subnormal":
        return (rng.standard_normal(n) * 1e-40).astype(np.float32)
    if kind == "signed zeros":
        w = rng.standard_normal(n).astype(np.float32)
        w[rng.random(n) < 0.3] = -0.0
        return w
    return rng.standard_normal(n).astype(np.float32)


def _select(weights, sparsities, priors=None, threads=2, zero=None):
    outs = [np.full(w.size, 7, np.uint8) for w in weights]
    counts = [prune_count(s, w.size) for w, s in zip(weights, sparsities)]
    decided = native.select_masks(weights, counts, priors, outs, threads=threads, zero=zero)
    return decided, [o.astype(bool) for o in outs], outs


def _zeroed(a, mask):
    """``a`` with +0.0 where ``mask`` is False, bits of the rest unchanged (as the kernels must zero)."""
    out = a.copy()
    out.view(np.uint32)[~mask] = 0
    return out


@needs_kernels
@given(st.lists(st.integers(2, 40_000), min_size=1, max_size=4), st.floats(0.01, 0.99), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "integers", "rounded", "subnormal", "signed zeros"]), st.booleans())
@settings(max_examples=80, deadline=None)
def test_masks_equal_the_reference(sizes, s, seed, kind, with_prior):
    rng = np.random.default_rng(seed)
    weights = [_weights(kind, n, rng) for n in sizes if 0 < prune_count(s, n) < n]
    if not weights:
        return
    priors = None
    if with_prior:  # the previous event's masks; its pruned weights are 0.0, as the engine leaves them
        priors = [(rng.random(w.size) > s / 2).astype(np.uint8) for w in weights]
        for w, p in zip(weights, priors):
            w[p == 0] = 0.0
    # arrays zeroed in the mask pass: a copy of the weights, something else (e.g. momentum)
    others = [[w.copy(), rng.standard_normal(w.size).astype(np.float32)] for w in weights]
    before = [[a.copy() for a in group] for group in others]
    decided, masks, raw = _select(weights, [s] * len(weights), priors, zero=others)
    for i, (w, ok, mask) in enumerate(zip(weights, decided, masks)):
        prior = None if priors is None else priors[i].astype(bool)
        if ok:
            assert set(np.unique(raw[i])) <= {0, 1}
            assert np.array_equal(mask, reference_mask(w, s, Unstructured(), prior))
            for a, b in zip(others[i], before[i]):
                assert np.array_equal(a.view(np.uint32), _zeroed(b, mask).view(np.uint32))
        else:
            assert np.all(raw[i] == 7), "an undecided tensor's output is not touched"
            assert all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(others[i], before[i]))


@needs_kernels
def test_ordinary_tensors_are_decided():
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(n).astype(np.float32) for n in (1 << 16, 300_001, 8, 1 << 20)]
    decided, masks, _ = _select(weights, [0.5, 0.9, 0.5, 0.97])
    assert decided == [True] * 4
    assert [int((~m).sum()) for m in masks] == [prune_count(s, w.size) for w, s in
                                                zip(weights, [0.5, 0.9, 0.5, 0.97])]


@needs_kernels
def test_the_mask_pass_may_zero_the_weights_themselves():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(300_001).astype(np.float32)
    original = w.copy()
    decided, masks, _ = _select([w], [0.9], zero=[[w]])
    assert decided == [True]
    assert np.array_equal(masks[0], reference_mask(original, 0.9, Unstructured()))
    assert np.array_equal(w.view(np.uint32), _zeroed(original, masks[0]).view(np.uint32))


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_zero_where_zeroes_every_array_of_a_mask(threads):
    rng = np.random.default_rng(2)
    sizes = (5, 4096, 4097, (1 << 20) + 3)  # a tail, one slice, a slice and one, more than one job
    masks = [(rng.random(n) > 0.3).astype(np.uint8) for n in sizes]
    arrays = [[rng.standard_normal(n).astype(np.float32), rng.integers(-9, 9, n).astype(np.int32)] for n in sizes]
    before = [[a.copy() for a in group] for group in arrays]
    native.zero_where(masks, arrays, threads=threads)
    for m, group, old in zip(masks, arrays, before):
        for a, b in zip(group, old):
            assert np.array_equal(a.view(np.uint32), _zeroed(b, m.astype(bool)).view(np.uint32))
    with pytest.raises(ValueError, match="4-byte"):
        native.zero_where([masks[0]], [[np.zeros(5, np.float64)]])
    with pytest.raises(ValueError, match="uint8"):
        native.zero_where([masks[0].astype(bool)], [[np.zeros(5, np.float32)]])


def _fresh_zeroed(a, mask, prior):
    """``a`` after zeroing with ``fresh`` where few entries are pruned anew: +0.0 where ``mask`` is False in
    every run of 16 entries (from the start) that holds an entry ``prior`` kept and ``mask`` prunes; every
    other bit unchanged."""
    out = a.copy()
    went = np.concatenate([prior.astype(bool) & ~mask, np.zeros(-a.size % 16, bool)])
    runs = np.repeat(went.reshape(-1, 16).any(1), 16)[:a.size]
    out.view(np.uint32)[runs & ~mask] = 0
    return out


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("anew", ["few", "many"])
def test_fresh_arrays_get_only_the_runs_with_newly_pruned_entries_written(threads, anew):
    """Arrays known to be 0.0 wherever the previous mask prunes: zero_where and select_masks give what a
    full zeroing gives wherever they are 0.0 under the prior, as the engine guarantees. A slice of 4096
    entries with a few entries pruned anew gets +0.0 written only in the runs of 16 entries holding one (a
    value planted at an older zero elsewhere survives: nothing was written there); one with many is
    zeroed whole (streaming it costs less than scattered writes), so a planted value is 0.0 or still there."""
    rng = np.random.default_rng(4)
    for n in (5, 4096, 4097, (1 << 20) + 3):
        prior = (rng.random(n) > 0.6).astype(np.uint8)
        mask = prior.copy()
        if anew == "few":  # two entries per slice of 4096
            for a in range(0, n, 4096):
                kept = np.flatnonzero(prior[a:a + 4096])
                mask[a + kept[:2 * 97:97]] = 0
        else:
            mask &= (rng.random(n) > 0.01).astype(np.uint8)  # 1% of the kept entries go
        planted = rng.standard_normal(n).astype(np.float32)
        planted[prior == 0] = 3.0
        clean = np.where(prior == 0, 0.0, planted).astype(np.float32)
        full, fresh = planted.copy(), [planted.copy(), clean.copy()]
        native.zero_where([mask], [[full]], threads=threads, priors=[prior], fresh=[fresh])
        keep = mask.astype(bool)
        assert np.array_equal(full.view(np.uint32), _zeroed(planted, keep).view(np.uint32))
        assert np.array_equal(fresh[1].view(np.uint32), _zeroed(clean, keep).view(np.uint32))
        if anew == "few":
            assert np.array_equal(fresh[0].view(np.uint32), _fresh_zeroed(planted, keep, prior).view(np.uint32))
            assert n < 5000 or (fresh[0][prior == 0] == 3.0).mean() > 0.9
        else:
            assert np.array_equal(fresh[0][keep], planted[keep]) and (fresh[0][(prior == 1) & ~keep] == 0).all()
            assert np.isin(fresh[0][prior == 0], [0.0, 3.0]).all()
    w = rng.standard_normal(200_003).astype(np.float32)
    prior = (np.abs(w) > 0.5).astype(np.uint8)
    w[prior == 0] = 0.0
    state = rng.standard_normal(w.size).astype(np.float32)
    state[prior == 0] = 3.0
    original, planted = w.copy(), state.copy()
    outs = [np.zeros(w.size, np.uint8)]
    decided = native.select_masks([w], [prune_count(0.6, w.size)], [prior], outs, threads=threads,
                                  fresh=[[w, state]])
    mask = outs[0].astype(bool)
    assert decided == [True] and np.array_equal(mask, reference_mask(original, 0.6, Unstructured()))
    assert np.array_equal(w.view(np.uint32), _zeroed(original, mask).view(np.uint32))
    assert np.array_equal(state[mask], planted[mask]) and (state[(prior == 1) & ~mask] == 0).all()
    assert np.isin(state[prior == 0], [0.0, 3.0]).all()
    with pytest.raises(ValueError, match="no previous mask"):
        native.zero_where([outs[0]], [[]], fresh=[[state]])
    with pytest.raises(ValueError, match="no previous mask"):
        native.select_masks([w], [10], None, outs, fresh=[[state]])


@needs_kernels
def test_a_count_equal_to_the_prior_one_keeps_the_prior_mask():
    """A late ramp event on a small tensor prunes as many entries as before: the threshold lies among the
    zeros, and the mask is the prior (pruned entries first), decided here rather than handed back."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal(50_000).astype(np.float32)
    prior = (np.abs(w) > 0.3).astype(np.uint8)
    w[prior == 0] = 0.0
    w[np.flatnonzero(prior)[:5]] = 0.0  # kept entries that are 0.0 too: the prior's zeros still go first
    state = rng.standard_normal(w.size).astype(np.float32)
    original, before = w.copy(), state.copy()
    count = int((prior == 0).sum())
    decided, masks, _ = _select([w], [count / w.size], [prior], zero=[[state]])
    assert decided == [True] and np.array_equal(masks[0], prior.astype(bool))
    assert np.array_equal(masks[0], reference_mask(original, count / w.size, Unstructured(), prior.astype(bool)))
    assert np.array_equal(state.view(np.uint32), _zeroed(before, masks[0]).view(np.uint32))
    stale = original.copy()
    stale[np.flatnonzero(prior == 0)[0]] = 1.0  # pruned before, no longer 0: the reference path decides
    assert _select([stale], [count / w.size], [prior])[0] == [False]


@needs_kernels
def test_block_expansion_writes_fresh_arrays_only_where_blocks_go_anew():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 12, 3)).astype(np.float32)
    prior = np.ones(w.shape, np.uint8)
    prior[:4, :6] = 0  # one 4x6 region pruned before (4 blocks of 2x3 at every position)
    kept = np.ones(3 * 4 * 4, np.uint8)
    kept[[0, 1, 4, 5]] = 0  # position 0: the blocks pruned before ...
    kept[[16 + 15]] = 0  # ... and at position 1 the last block (rows 6-7, columns 9-11) goes anew
    state = rng.standard_normal(w.shape).astype(np.float32)
    state[prior == 0] = 3.0
    same = state.copy()
    out = np.zeros(w.shape, np.uint8)
    native.block_expand([kept], [(2, 3)], [prior], [out], zero=[[]], fresh=[[state]])
    mask = out.astype(bool)
    assert not mask[6:8, 9:12, 1].any() and mask[6:8, 9:12, [0, 2]].all() and not mask[:4, :6].any()
    assert (state[~mask & (prior == 1)] == 0).all() and np.array_equal(state[mask], same[mask])
    assert set(np.unique(state[prior == 0])) <= {0.0, 3.0} and (state[prior == 0] == 3.0).any()


@needs_kernels
def test_odd_tensors_are_handed_back():
    rng = np.random.default_rng(1)
    nan = rng.standard_normal(10_000).astype(np.float32)
    nan[77] = np.nan
    inf = rng.standard_normal(10_000).astype(np.float32)
    inf[5] = -np.inf
    stale = rng.standard_normal(10_000).astype(np.float32)
    prior = (np.abs(stale) > 0.5).astype(np.uint8)
    stale[prior == 0] = 0.0
    stale[np.flatnonzero(prior == 0)[3]] = 2.0  # pruned before, no longer 0: the reference path ranks it
    zeros = np.zeros(10_000, np.float32)
    zeros[:100] = 1.0  # the threshold lies among zeros
    ok = rng.standard_normal(10_000).astype(np.float32)
    decided, masks, _ = _select([nan, inf, stale, zeros, ok], [0.5] * 5,
                                [np.ones(10_000, np.uint8)] * 2 + [prior] + [np.ones(10_000, np.uint8)] * 2)
    assert decided == [False, False, False, False, True]


@needs_kernels
def test_a_band_larger_than_the_sample_promised(monkeypatch):
    """The sampled entries (every 17th) are spread out, all the others equal one value inside the range:
    the range holds far more entries than the sample said, and the scan runs again with room for them."""
    lib = native.kernels()
    scans = []
    scan = lib.pk_scan

    def counted(*args):
        scans.append(args[7])  # cap
        return scan(*args)

    monkeypatch.setattr(lib, "pk_scan", counted)
    n = 17 * 2000
    w = np.full(n, 1000.25, np.float32)
    w[::17] = np.arange(2000, dtype=np.float32)
    decided, masks, _ = _select([w], [0.5], threads=1)
    assert decided == [True] and len(scans) == 2 and scans[1] > scans[0]
    assert np.array_equal(masks[0], reference_mask(w, 0.5, Unstructured()))


@needs_kernels
def test_bad_arguments_are_refused():
    w = np.ones(100, np.float32)
    with pytest.raises(ValueError, match="float64"):
        native.select_masks([w.astype(np.float64)], [10], None, [np.zeros(100, np.uint8)])
    with pytest.raises(ValueError, match="count 100"):
        native.select_masks([w], [100], None, [np.zeros(100, np.uint8)])
    with pytest.raises(ValueError, match="tensor #0"):
        native.select_masks([w], [10], None, [np.zeros(99, np.uint8)])


def _fresh(monkeypatch, tmp_path, **env):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_turned_off_by_environment(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path, PRUNEKIT_NATIVE="0")
    assert native.kernels() is None and not list(tmp_path.iterdir())


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    if not native._x86_64():
        pytest.skip("not x86-64: nothing is built")
    _fresh(monkeypatch, tmp_path, CC="false")
    with pytest.warns(RuntimeWarning, match="native prune-event kernels unavailable"):
        assert native.kernels() is None
    assert native.kernels() is None  # decided once: no second warning, no second build
    assert not list(tmp_path.iterdir()), "no half-written library left behind"
    with pytest.raises(RuntimeError, match="not available"):
        native.select_masks([np.ones(8, np.float32)], [1], None, [np.zeros(8, np.uint8)])


def test_another_architecture_warns_once_and_builds_nothing(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    with pytest.warns(RuntimeWarning, match="x86-64 CPU with AVX2 .this is aarch64"):
        assert native.kernels() is None
    assert native.kernels() is None and not list(tmp_path.iterdir())


def test_a_read_only_cache_warns_and_falls_back(monkeypatch, tmp_path):
    if not native._x86_64():
        pytest.skip("not x86-64: nothing is built")
    blocked = tmp_path / "file"
    blocked.write_text("")
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(blocked / "cache"))  # under a file: cannot be created
    with pytest.warns(RuntimeWarning, match="native prune-event kernels unavailable"):
        assert native.kernels() is None


@needs_kernels
def test_cc_may_hold_a_wrapper_command(monkeypatch, tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    _fresh(monkeypatch, tmp_path, CC=f"env LC_ALL=C {compiler}")
    assert native.kernels() is not None and len(list(tmp_path.glob("select-*.so"))) == 1


@needs_kernels
def test_built_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    assert native.kernels() is not None
    (built,) = tmp_path.glob("select-*.so")
    stamp = os.stat(built).st_mtime_ns
    _fresh(monkeypatch, tmp_path)
    assert native.kernels() is not None
    assert os.stat(built).st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1


# -- N:M groups and banks of up to 8 ---------------------------------------------------------------------
@needs_kernels
@given(st.sampled_from([(16, 8), (24, 24), (6, 40), (8, 16, 3, 3), (4, 8, 1, 1), (4, 24, 2, 3), (3, 8, 5), (40, 56, 1, 9),
                        (4, 64), (2, 96, 3, 3), (3, 48, 5), (2, 32, 8, 9)]),
       st.sampled_from([2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 48, 64]), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "integers", "subnormal", "signed zeros"]), st.booleans())
@settings(max_examples=120, deadline=None)
def test_group_masks_equal_the_reference(shape, m, s, seed, kind, with_prior):
    if shape[1] % m:
        m = 4 if shape[1] % 4 == 0 else 2  # banks of 2..8 compare pairs, longer ones select per bank
    rng = np.random.default_rng(seed)
    w = _weights(kind, int(np.prod(shape)), rng).reshape(shape)
    pattern = BankBalanced(m)
    layout = pattern.layout(shape)
    assert layout.group_size == m and layout.perm == (0, *range(2, len(shape)), 1)
    prior = None
    if with_prior:
        prior = rng.random(shape) > 0.3
        w[~prior] = 0.0
    out = np.full(shape, 7, np.uint8)
    decided = native.group_masks([w], [m], [prune_count(s, m)], None if prior is None else [prior.astype(np.uint8)],
                                 [out], threads=1)
    assert decided == [True]
    assert np.array_equal(out.astype(bool), reference_mask(w, s, pattern, prior))


@needs_kernels
def test_group_masks_hand_back_non_finite_weights_and_refuse_bad_groups():
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((16, 8, 3, 3)).astype(np.float32) for _ in range(3)]
    ws[1][3, 2, 1, 1] = np.nan
    ws[2][0, 0, 0, 0] = np.inf
    outs = [np.zeros(w.shape, np.uint8) for w in ws]
    assert native.group_masks(ws, [4] * 3, [2] * 3, None, outs, threads=2) == [True, False, False]
    with pytest.raises(ValueError, match="groups of 3"):
        native.group_masks([ws[0]], [3], [1], None, [outs[0]])
    long = [rng.standard_normal((4, 32, 3)).astype(np.float32) for _ in range(2)]
    long[1][1, 5, 2] = np.nan
    assert native.group_masks(long, [16, 16], [9, 9], None, [np.zeros(w.shape, np.uint8) for w in long]) == [True, False]
    with pytest.raises(ValueError, match="count 5"):
        native.group_masks([ws[0]], [4], [5], None, [outs[0]])


# -- blocks ----------------------------------------------------------------------------------------------------
@needs_kernels
@given(st.sampled_from([(8, 8), (16, 12), (8, 4, 3, 3), (4, 8, 1, 5), (12, 8, 2)]), st.sampled_from([1, 2, 4]),
       st.sampled_from([1, 2, 4]), st.integers(0, 2**31 - 1), st.booleans())
@settings(max_examples=60, deadline=None)
def test_block_scores_are_the_reference_scores(shape, r, c, seed, with_prior):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    prior = (rng.random(shape) > 0.7).astype(np.uint8) if with_prior else None
    ((scores, kept),) = native.block_scores([w], [(r, c)], None if prior is None else [prior])
    layout = Block(r, c).layout(shape)
    # float64 sums of float32 squares, added in the one order every implementation uses (masks.block_sums):
    # equal to the last bit, also for blocks of very mixed magnitudes
    w *= np.float32(10.0) ** rng.integers(-6, 7, size=shape).astype(np.float32)
    assert np.array_equal(native.block_scores([w], [(r, c)], None)[0][0],
                          to_scores(w, layout).reshape(-1))
    import torch
    from prunekit.torch import _select
    assert np.array_equal(_select._scores(torch.from_numpy(w), layout).reshape(-1).numpy(),
                          to_scores(w, layout).reshape(-1))
    if with_prior:
        assert np.array_equal(kept.astype(bool), to_scores(prior.astype(np.float32), layout).reshape(-1) > 0)
    else:
        assert kept is None
    w[0, 0, ...] = np.nan
    assert np.isnan(native.block_scores([w], [(r, c)], None)[0][0][0])
    with pytest.raises(ValueError, match="blocks 5x"):
        native.block_scores([w], [(5, c)], None)


@needs_kernels
@given(st.sampled_from([(8, 8), (16, 12), (8, 4, 3, 3), (4, 8, 1, 5), (12, 8, 2), (64, 32)]),
       st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4]), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "integers"]), st.booleans())
@settings(max_examples=80, deadline=None)
def test_block_masks_from_scores_selection_and_expansion_equal_the_reference(shape, r, c, s, seed, kind, with_prior):
    """pk_block_scores, pk_block_select and pk_block_expand together give the reference's mask: blocks that
    kept nothing before go first (all of them), then the lowest scores, ties at the lower index first."""
    rng = np.random.default_rng(seed)
    w = _weights(kind, int(np.prod(shape)), rng).reshape(shape)
    prior = None
    if with_prior:
        prior = rng.random(shape) > 0.4
        w[~prior] = 0.0
    p8 = None if prior is None else [prior.astype(np.uint8)]
    ((scores, kept),) = native.block_scores([w], [(r, c)], p8)
    count = prune_count(s, scores.size)
    (decided,) = native.block_select([scores], [count], None if kept is None else [kept])
    out = np.zeros(shape, np.uint8)
    native.block_expand([decided], [(r, c)], p8, [out])
    assert np.array_equal(out.astype(bool), reference_mask(w, s, Block(r, c), prior))
    with pytest.raises(ValueError, match="count"):
        native.block_select([scores], [scores.size + 1], None)


@needs_kernels
@pytest.mark.parametrize("pattern", [Unstructured(), BankBalanced(64), NM(2, 4), Block(4, 4)], ids=repr)
@pytest.mark.parametrize("with_prior", [False, True])
def test_host_masks_of_the_framework_adapters_are_the_reference(pattern, with_prior):
    """Keras, TF1 and MXNet get their masks from ``HostPruner``: large float32 tensors go through the native
    kernels (blocks stay with the reference), with the reference's answer, ties and previous masks included."""
    from prunekit.core.pruner import _native_mask, host_mask

    rng = np.random.default_rng(4)
    w = np.round(rng.standard_normal((64, 128, 3)), 1).astype(np.float32)  # (out, in, spatial), ties
    prior = None
    if with_prior:
        prior = reference_mask(w, 0.5, pattern)
        w[~prior] = 0.0
    expected = reference_mask(w, 0.75, pattern, prior)
    native_mask = _native_mask(w, 0.75, pattern, prior)
    assert (native_mask is None) == isinstance(pattern, Block)
    assert np.array_equal(host_mask(w, 0.75, pattern, prior), expected)
    assert host_mask(w.astype(np.float64), 0.75, pattern, prior).dtype == bool  # another dtype: the reference
