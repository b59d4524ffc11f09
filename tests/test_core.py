"""The framework-neutral core: schedule, patterns, plan, reference masks (numpy only)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core import (NM, BankBalanced, Block, Global, PruneConfig, Schedule, Unstructured, prune_count,
                           reference_global_masks, reference_mask, resolve_plan)
from prunekit.core.patterns import from_sparse_block, parse_pattern
from prunekit.errors import ConfigError, PlanError, PrunekitError


# -- schedule -----------------------------------------------------------------------------------------
def test_events_follow_spec():
    s = Schedule(pretrain_step=5, sparse_step=10, frequency=4)
    assert s.events() == [5, 9, 13, 15]
    assert [t for t in range(30) if s.is_event(t)] == s.events()


def test_one_shot_when_sparse_step_zero():
    s = Schedule(pretrain_step=7, sparse_step=0, frequency=3)
    assert s.events() == [7]
    assert s.sparsity_at(7, 0.0, 0.8) == 0.8


@given(st.integers(0, 50), st.integers(1, 200), st.integers(1, 60), st.floats(0, 0.5), st.floats(0.5, 0.99))
@settings(max_examples=60, deadline=None)
def test_schedule_hits_end_values_and_rises(pre, sparse, freq, s_i, s_f):
    s = Schedule(pre, sparse, freq)
    ev = s.events()
    assert ev[0] == pre and ev[-1] == pre + sparse
    assert s.sparsity_at(ev[0], s_i, s_f) == pytest.approx(s_i)
    assert s.sparsity_at(ev[-1], s_i, s_f) == s_f
    values = [s.sparsity_at(t, s_i, s_f) for t in ev]
    assert values == sorted(values)


def test_float_frequency_is_floored():
    assert Schedule(frequency=937.5 / 5).frequency == 187


# -- argument validation (one table of error rows) ------------------------------------------------
ERROR_ROWS = [
    (dict(target_sparsity=1.2), ConfigError, r"target_sparsity must be in \[0, 1\); got 1.2"),
    (dict(target_sparsity=-0.1), ConfigError, r"target_sparsity must be in \[0, 1\); got -0.1"),
    (dict(target_sparsity=1.0), ConfigError, r"got 1.0"),
    (dict(pretrain_step=-1), ConfigError, r"pretrain_step must be >= 0; got -1"),
    (dict(sparse_step=-5), ConfigError, r"sparse_step must be >= 0; got -5"),
    (dict(sparse_step=2.5), ConfigError, r"sparse_step must be a whole number of steps; got 2.5"),
    (dict(frequency=0), ConfigError, r"frequency must be >= 1 .*got 0"),
    (dict(frequency=0.5), ConfigError, r"frequency must be >= 1 .*got 0.5"),
    (dict(init_sparsity=1.5), ConfigError, r"init_sparsity must be in \[0, 1\); got 1.5"),
    (dict(target_sparsity=0.3, init_sparsity=0.5), ConfigError, r"init_sparsity \(0.5\) must not exceed"),
    (dict(pattern=NM(2, 4), target_sparsity=0.9), ConfigError, r"NM\(2, 4\) always ends at sparsity 0.5"),
    (dict(pattern="3:2"), ConfigError, r"n < m is needed; got NM\(3, 2\)"),
    (dict(pattern="diagonal"), ConfigError, r"unknown pattern 'diagonal'"),
    (dict(pattern="bank0"), ConfigError, r"bank_size must be a positive integer; got 0"),
    (dict(special_sparsity_dict={"a": 1.5}), ConfigError, r"special_sparsity_dict\['a'\] must be in \[0, 1\); got 1.5"),
    (dict(l1_strength=1e-4), ConfigError, r"l1_strength=0.0001 has no effect unless L1_regularization=True"),
    (dict(L1_regularization=True, l1_strength=-1), ConfigError, r"l1_strength must be a number > 0; got -1"),
    (dict(keywords_no_sparse="bias"), TypeError, r"keywords_no_sparse must be a list of substrings"),
    (dict(restore_sparsity="yes"), TypeError, r"restore_sparsity must be True or False; got 'yes'"),
    (dict(exponent=0), ConfigError, r"exponent must be a number > 0; got 0"),
    (dict(sparse_block={"4d": [2, 1, 1, 1]}), ConfigError, r"axis other than the input axis"),
    (dict(pattern="2:4", sparse_block={"2d": [1, 1]}), ConfigError, r"either pattern= or the seed's sparse_block="),
]


@pytest.mark.parametrize("kwargs,error,message", ERROR_ROWS)
def test_bad_arguments_raise_naming_the_value(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        PruneConfig.from_kwargs(**kwargs)
    assert isinstance(info.value, PrunekitError)


def test_nm_target_defaults_to_its_fixed_sparsity():
    assert PruneConfig.from_kwargs(pattern="2:4").target_sparsity == 0.5


def test_sparse_block_mapping():
    assert from_sparse_block({"1d": [1], "2d": [1, 1], "4d": [1, 1, 1, 1]}) == Unstructured()
    assert from_sparse_block({"1d": [1], "2d": [1, 1], "4d": [-1, 4, -1, 1]}) == Block(1, 4)
    assert parse_pattern("block2x4") == Block(2, 4) and parse_pattern("bank16") == BankBalanced(16)


# -- plan -----------------------------------------------------------------------------------------
SHAPES = [("conv1.weight", (8, 3, 3, 3)), ("bn1.weight", (8,)), ("bn1.bias", (8,)),
          ("layer1.0.conv.weight", (16, 8, 3, 3)), ("layer2.0.conv.weight", (16, 16, 3, 3)),
          ("fc.weight", (10, 30)), ("fc.bias", (10,))]


def plan_for(**kwargs):
    return resolve_plan(SHAPES, PruneConfig.from_kwargs(**kwargs))


def test_default_plan_prunes_matrices_without_keywords():
    plan = plan_for(target_sparsity=0.5)
    assert plan.names == ["conv1.weight", "layer1.0.conv.weight", "layer2.0.conv.weight", "fc.weight"]
    assert "fewer than 2 dims" in str(plan)


def test_keywords_exclude_by_substring():
    assert "fc.weight" not in plan_for(target_sparsity=0.5, keywords_no_sparse=["fc"]).names


def test_special_dict_exact_and_glob():
    plan = plan_for(target_sparsity=0.5, special_sparsity_dict={"layer*.weight": 0.8, "layer2.0.conv.weight": 0.9,
                                                                 "conv1.weight": 0.0})
    assert plan["layer1.0.conv.weight"].target == 0.8
    assert plan["layer2.0.conv.weight"].target == 0.9
    assert "conv1.weight" not in plan.names


def test_special_dict_exact_name_overrides_default_rules():
    plan = plan_for(special_sparsity_dict={"bn1.weight": 0.5})
    assert plan.names == ["bn1.weight"]


def test_unknown_special_key_names_closest():
    with pytest.raises(PlanError, match=r"'conv1_weight' matches no parameter; did you mean 'conv1.weight'"):
        plan_for(target_sparsity=0.5, special_sparsity_dict={"conv1_weight": 0.5})
    with pytest.raises(PlanError, match=r"'block\*' matches no parameter"):
        plan_for(target_sparsity=0.5, special_sparsity_dict={"block*": 0.5})


def test_pattern_that_does_not_fit_warns_or_errors():
    with pytest.warns(UserWarning, match=r"'fc.weight' stays dense: NM\(2, 4\) needs the input axis \(size 30\)"):
        plan = plan_for(pattern="2:4")
    assert "fc.weight" not in plan.names and "conv1.weight" not in plan.names
    with pytest.raises(PlanError, match=r"'fc.weight': NM\(2, 4\) needs the input axis \(size 30\) divisible by 4"):
        plan_for(pattern="2:4", special_sparsity_dict={"fc.weight": 0.5})


def test_names_required_for_name_options():
    config = PruneConfig.from_kwargs(target_sparsity=0.5, special_sparsity_dict={"x": 0.5})
    with pytest.raises(PlanError, match="need parameter names"):
        resolve_plan([("param0", (4, 4))], config, named=False)


# -- reference masks --------------------------------------------------------------------------------
def test_prune_count_rounds_half_up():
    assert [prune_count(s, 10) for s in (0.0, 0.04, 0.05, 0.25, 0.94, 0.99)] == [0, 0, 1, 3, 9, 10]


def test_ties_go_to_lower_index():
    w = np.array([[1.0, 1.0, 1.0, 1.0]])
    assert reference_mask(w, 0.5, Unstructured()).tolist() == [[False, False, True, True]]


shapes = st.sampled_from([(8, 8), (4, 16), (8, 4, 3, 3), (16, 8, 1, 1), (12, 32)])


@given(shapes, st.floats(0, 0.99), st.integers(0, 2**31 - 1), st.booleans())
@settings(max_examples=80, deadline=None)
def test_exact_zero_counts_every_pattern(shape, s, seed, integer):
    rng = np.random.default_rng(seed)
    w = rng.integers(-3, 4, size=shape).astype(np.float32) if integer else rng.standard_normal(shape).astype(np.float32)
    n = w.size
    assert (~reference_mask(w, s, Unstructured())).sum() == prune_count(s, n)
    bank = reference_mask(w, s, BankBalanced(4))
    per_bank = (~np.moveaxis(bank, 1, -1).reshape(-1, 4)).sum(axis=1)
    assert (per_bank == prune_count(s, 4)).all()
    nm = reference_mask(w, 0.5, NM(2, 4))
    assert (np.moveaxis(nm, 1, -1).reshape(-1, 4).sum(axis=1) == 2).all()
    blk = reference_mask(w, s, Block(2, 4))
    blocks = np.moveaxis(np.moveaxis(blk, 0, -1), 0, -1) if blk.ndim == 4 else blk
    b = blocks.reshape(-1, shape[0] // 2, 2, shape[1] // 4, 4)
    assert (b.all(axis=(2, 4)) | ~b.any(axis=(2, 4))).all(), "blocks are kept or pruned whole"
    assert (~blk).sum() == prune_count(s, n // 8) * 8
    masks = reference_global_masks([w, w[:2]], s)
    assert sum((~m).sum() for m in masks) == prune_count(s, n + w[:2].size)


@given(shapes, st.floats(0, 0.5), st.floats(0, 0.49), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_masks_nest_as_sparsity_rises(shape, s1, ds, seed):
    w = np.random.default_rng(seed).integers(-2, 3, size=shape).astype(np.float32)
    for pattern in (Unstructured(), BankBalanced(4), Block(2, 2)):
        low = reference_mask(w, s1, pattern)
        high = reference_mask(w * low, s1 + ds, pattern, prior=low)
        assert not (high & ~low).any(), "a pruned entry came back"
        # the same values in another memory layout (and a fresh copy of the prior) give the same mask
        again = reference_mask(np.asfortranarray(w * low), s1 + ds, pattern, prior=np.array(low, order="F"))
        assert again.flags.c_contiguous or again.flags.f_contiguous
        assert np.array_equal(high, again), "same inputs, same mask"


def test_prior_zeros_never_come_back():
    w = np.array([[5.0, 4.0, 3.0, 2.0]])
    prior = np.array([[False, True, True, True]])
    assert reference_mask(w, 0.0, Unstructured(), prior).tolist() == [[False, True, True, True]]


def test_global_uses_one_threshold():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[10.0, 20.0], [30.0, 40.0]])
    ma, mb = reference_global_masks([a, b], 0.5)
    assert not ma.any() and mb.all()
    assert Global().is_global


def test_core_imports_without_any_framework():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'torch', 'tensorflow', 'keras', 'mxnet', 'jax'}:
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import prunekit, prunekit.core
        from prunekit.core import PruneConfig, resolve_plan
        resolve_plan([('w', (4, 4))], PruneConfig.from_kwargs(target_sparsity=0.5))
        assert not any(m.split('.')[0] in {'torch', 'tensorflow', 'keras', 'mxnet'} for m in sys.modules)
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([(), (1, 1), (3, 3)])),
                min_size=1, max_size=5),
       st.floats(0.01, 0.995))
def test_erk_splits_one_target_with_exact_total_counts(shapes, target):
    from prunekit.core.masks import reference_mask
    from prunekit.core.pruner import HostPruner
    named = [(f"l{i}.weight", (o, i_, *k)) for i, (o, i_, k) in enumerate(shapes)]
    config = PruneConfig.from_kwargs(target_sparsity=target, pattern="erk")
    plan = resolve_plan(named, config)
    total = sum(int(np.prod(s)) for _, s in named)
    pruned = sum(prune_count(spec.target, spec.numel) for spec in plan)
    assert pruned == prune_count(target, total)  # the dense ones prune 0
    # densities follow ERK: a smaller sum(shape)/prod(shape) never gets a lower target, up to the rounding
    # of each tensor's kept count to a whole entry (at most one entry each way)
    by = sorted(plan, key=lambda s: sum(s.shape) / s.numel)
    assert all(a.target >= b.target - 1.0 / a.numel - 1.0 / b.numel for a, b in zip(by, by[1:]))
    masks = HostPruner(plan, config).masks(0, {s.name: np.random.default_rng(0).normal(size=s.shape) for s in plan})
    assert sum(int((~m).sum()) for m in masks.values()) == prune_count(target, total)


def test_erk_names_dense_tensors_and_leaves_special_targets_alone():
    shapes = [("conv.weight", (64, 32, 3, 3)), ("fc.weight", (10, 64)), ("head.weight", (8, 64))]
    plan = resolve_plan(shapes, PruneConfig.from_kwargs(target_sparsity=0.9, pattern="erk",
                                                        special_sparsity_dict={"head.weight": 0.5}))
    assert plan.names == ["conv.weight", "head.weight"] and ("fc.weight", (10, 64), "ERK() keeps it dense") in plan.dense
    assert plan["head.weight"].target == 0.5 and plan["head.weight"].pattern == Unstructured()
    assert parse_pattern("erk").spec() == "erk" and "ERK()" in str(plan)
