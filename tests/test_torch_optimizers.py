"""PyTorch optimizers against torch.optim, the numpy reference, and the SPEC's invariants."""

import copy
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import prunekit.torch as pruning  # noqa: E402
from prunekit.core import BankBalanced, Block, NM, Unstructured, reference_global_masks, reference_mask  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from torch_helpers import batches, small_net, train  # noqa: E402

# -- one table drives equivalence: (sparse class, base class, kwargs) --------------------------------
BASE_ROWS = [
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1)),
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-3)),
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1, momentum=0.5, maximize=True, foreach=False)),
    (pruning.SGDSparse, torch.optim.SGD, dict(lr=0.1, momentum=0.9, foreach=True)),
    (pruning.AdamSparse, torch.optim.Adam, dict(lr=1e-2)),
    (pruning.AdamSparse, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (pruning.AdamSparse, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.9), maximize=True, foreach=False)),
    (pruning.AdamWSparse, torch.optim.AdamW, dict(lr=1e-2)),
    (pruning.AdamWSparse, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=True)),
    (pruning.AdamWSparse, torch.optim.AdamW, dict(lr=1e-2, foreach=False, eps=1e-6)),
]


def groups(model, named=False):
    convs = [(n, p) for n, p in model.named_parameters() if n.startswith(("0.", "1.", "3."))]
    rest = [(n, p) for n, p in model.named_parameters() if not n.startswith(("0.", "1.", "3."))]
    if named:
        return [{"params": convs, "lr": 0.05}, {"params": rest}]
    return [{"params": [p for _, p in convs], "lr": 0.05}, {"params": [p for _, p in rest]}]


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for key, value in sa["state"][k].items():
            assert torch.equal(value, sb["state"][k][key]), key
    for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


@pytest.mark.parametrize("sparse_cls,base_cls,kwargs", BASE_ROWS)
def test_target_zero_is_the_base_optimizer_bit_for_bit(sparse_cls, base_cls, kwargs):
    ref, mine = small_net(), small_net()
    base = base_cls(groups(ref), **kwargs)
    sparse = sparse_cls(groups(mine), param_name=mine.named_parameters(), target_sparsity=0.0,
                        pretrain_step=0, sparse_step=3, frequency=1, **kwargs)
    data = batches(6)
    train(ref, base, data)
    train(mine, sparse, data)
    for (n, a), (_, b) in zip(ref.named_parameters(), mine.named_parameters()):
        assert torch.equal(a, b), n
    assert_same_state(base, sparse)


@pytest.mark.parametrize("sparse_cls,base_cls,kwargs", BASE_ROWS[::3])
def test_dense_steps_before_pruning_are_the_base_steps(sparse_cls, base_cls, kwargs):
    ref, mine = small_net(), small_net()
    base = base_cls(ref.parameters(), **kwargs)
    sparse = sparse_cls(mine.named_parameters(), target_sparsity=0.9, pretrain_step=100, **kwargs)
    train(ref, base, batches(4))
    train(mine, sparse, batches(4))
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mine.parameters()))


# -- masks: torch against the numpy reference, ties included -----------------------------------------
SHAPES = [(8, 8), (4, 16), (8, 4, 3, 3), (16, 8, 1, 1), (12, 32)]


@given(st.sampled_from(SHAPES), st.floats(0, 0.99), st.integers(0, 2**31 - 1), st.booleans(),
       st.sampled_from([Unstructured(), BankBalanced(4), NM(2, 4), Block(2, 4), Block(4, 4)]),
       st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
@settings(max_examples=120, deadline=None)
def test_torch_masks_equal_reference(shape, s, seed, integer, pattern, dtype):
    from prunekit.torch import _select
    rng = np.random.default_rng(seed)
    w = rng.integers(-3, 4, size=shape) if integer else rng.standard_normal(shape)
    w = torch.tensor(w, dtype=dtype)
    ref_in = w.to(torch.float64 if dtype == torch.float64 else torch.float32).numpy()
    assert np.array_equal(_select.tensor_mask(w, s, pattern).numpy(), reference_mask(ref_in, s, pattern))
    prior = torch.tensor(rng.random(shape) > 0.3)
    assert np.array_equal(_select.tensor_mask(w * prior, s, pattern, prior).numpy(),
                          reference_mask(ref_in * prior.numpy(), s, pattern, prior.numpy()))
    ws = [w, w[: shape[0] // 2]]
    mine = _select.global_masks(ws, s)
    ref = reference_global_masks([x.to(torch.float32 if dtype != torch.float64 else dtype).numpy() for x in ws], s)
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(mine, ref))


# -- invariants of a step -------------------------------------------------------------------------------
PRUNING_ROWS = [
    (pruning.SGDSparse, dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    (pruning.AdamSparse, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (pruning.AdamWSparse, dict(lr=1e-2, weight_decay=0.5)),
]


@pytest.mark.parametrize("pattern", ["unstructured", "global", "erk", "bank4", "2:4", "block2x2"])
@pytest.mark.parametrize("cls,kwargs,method", [(*row, "magnitude") for row in PRUNING_ROWS] +
                         [(*PRUNING_ROWS[0], "feedback"), (*PRUNING_ROWS[1], "sr-ste")])
def test_pruned_weights_stay_exactly_zero(cls, kwargs, pattern, method):
    model = small_net()
    target = None if pattern == "2:4" else 0.8
    opt = cls(model.named_parameters(), target_sparsity=target, pattern=pattern, pretrain_step=2, sparse_step=6,
              frequency=2, method=method, **kwargs)
    params = dict(model.named_parameters())
    for i, data in enumerate(batches(14)):
        train(model, opt, [data])
        for name, mask in opt.pruning.masks.items():
            assert (params[name][~mask] == 0).all(), (name, i)
    per, total = opt.sparsity()
    expected = {"2:4": 0.5, "bank4": 0.75}.get(pattern, 0.8)  # a bank of 4 prunes round(0.8 * 4) = 3
    assert total == pytest.approx(expected, abs=0.01)
    if pattern not in ("global", "erk"):  # one total split across tensors
        assert all(v == pytest.approx(expected, abs=0.01) for v in per.values())


def test_state_of_newly_pruned_entries_is_zeroed():
    model = small_net()
    opt = pruning.AdamSparse(model.named_parameters(), lr=1e-2, target_sparsity=0.5, pretrain_step=3)
    train(model, opt, batches(3))
    assert not opt.pruning.masks
    train(model, opt, batches(1, seed=1))  # the event at step 3, then one update
    for name, p in model.named_parameters():
        if name in opt.pruning.masks:
            pruned = ~opt.pruning.masks[name]
            # the event zeroed both moments; the update after it adds (1 - beta) * g on pruned entries,
            # never anything carried from before the event
            g = p.grad[pruned]
            assert torch.allclose(opt.state[p]["exp_avg"][pruned], 0.1 * g, rtol=1e-5, atol=1e-12)


def test_one_shot_at_pretrain_step_and_exact_counts():
    model = small_net()
    opt = pruning.SGDSparse(model.parameters(), lr=0.1, param_name=model.named_parameters(),
                            target_sparsity=0.75, pretrain_step=2, sparse_step=0)
    train(model, opt, batches(2))
    assert opt.sparsity()[1] == 0.0
    train(model, opt, batches(1))
    params = dict(model.named_parameters())
    for name in opt.plan.names:
        n = params[name].numel()
        assert int((params[name] == 0).sum()) == int(0.75 * n + 0.5)  # halves round up (docs/spec.md)


def test_schedule_ramp_follows_the_cubic():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.01, target_sparsity=0.9, pretrain_step=1,
                            sparse_step=8, frequency=2)
    seen = {}
    for step, data in enumerate(batches(12)):
        train(model, opt, [data])
        seen[step] = opt.sparsity()[1]
    sched = opt.pruning.schedule
    for step in sched.events():
        assert seen[step] == pytest.approx(sched.sparsity_at(step, 0.0, 0.9), abs=2e-3)


def test_restore_keeps_zeros_and_continues_to_target():
    model = small_net()
    with torch.no_grad():
        model[0].weight[:, 0] = 0
    restored = float((model[0].weight == 0).float().mean())
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, restore_sparsity=True,
                            target_sparsity=0.8, pretrain_step=2, sparse_step=4, frequency=2)
    zeros_before = model[0].weight == 0
    train(model, opt, batches(2))
    assert (model[0].weight[zeros_before] == 0).all()
    assert opt.sparsity()[0]["0.weight"] == pytest.approx(restored, abs=1e-6)
    train(model, opt, batches(6))
    assert (model[0].weight[zeros_before] == 0).all()
    assert opt.sparsity()[1] == pytest.approx(0.8, abs=0.01)


def test_fix_sparsity_fine_tunes_keeping_the_pattern():
    model = small_net()
    pre = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.9, sparse_step=0)
    train(model, pre, batches(2))
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if n in pre.plan.names}
    opt = pruning.AdamSparse(model.named_parameters(), lr=1e-2, restore_sparsity=True, fix_sparsity=True)
    train(model, opt, batches(10, seed=3))
    for name, p in model.named_parameters():
        if name in zeros:
            assert torch.equal(p == 0, zeros[name]), name


def test_amp_skipped_step_does_not_advance_the_schedule():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, pretrain_step=1)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batches(1)[0]
    opt.zero_grad()
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    next(model.parameters()).grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert opt.pruning.step_count == 0
    opt.zero_grad()
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    assert opt.pruning.step_count == 1


def test_gradient_accumulation_counts_one_step():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, pretrain_step=5)
    opt.zero_grad()
    for x, y in batches(4):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.pruning.step_count == 1


def test_closure_is_supported():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, L1_regularization=True)
    train(model, opt, batches(3), closure=True)
    assert opt.sparsity()[1] == pytest.approx(0.5, abs=0.01)


def test_l1_adds_sign_to_gradients_of_prunable_tensors():
    a, b = small_net(), small_net()
    plain = pruning.SGDSparse(a.named_parameters(), lr=0.1)
    l1 = pruning.SGDSparse(b.named_parameters(), lr=0.1, L1_regularization=True, l1_strength=0.01)
    w0 = b[6].weight.detach().clone()
    train(a, plain, batches(1))
    train(b, l1, batches(1))
    assert torch.allclose(b[6].weight, a[6].weight - 0.1 * 0.01 * torch.sign(w0), atol=1e-6)
    assert torch.equal(a[0].bias, b[0].bias)


# -- state: checkpoint and resume --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs", PRUNING_ROWS)
def test_resume_from_checkpoint_is_bit_identical(cls, kwargs):
    prune = dict(target_sparsity=0.85, pretrain_step=2, sparse_step=8, frequency=3, pattern="bank4")
    data = batches(16)
    straight = small_net()
    opt = cls(straight.named_parameters(), **prune, **kwargs)
    train(straight, opt, data)

    first = small_net()
    opt1 = cls(first.named_parameters(), **prune, **kwargs)
    train(first, opt1, data[:7])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer)
    second = small_net(seed=99)
    second.load_state_dict(ckpt["model"])
    opt2 = cls(second.named_parameters(), **prune, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.pruning.step_count == 7
    train(second, opt2, data[7:])
    for (n, a), (_, b) in zip(straight.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), n
    assert all(torch.equal(opt.pruning.masks[k], opt2.pruning.masks[k]) for k in opt.pruning.masks)


def test_earlier_state_dict_is_not_changed_by_later_steps():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, sparse_step=4, frequency=1)
    train(model, opt, batches(2))
    snapshot = opt.state_dict()
    step = snapshot["param_groups"][0]["prunekit_step"]
    masks = {i: s["prunekit_mask"] for i, s in snapshot["state"].items() if "prunekit_mask" in s}
    assert step == 2 and masks
    train(model, opt, batches(3))
    assert snapshot["param_groups"][0]["prunekit_step"] == step
    assert all(snapshot["state"][i]["prunekit_mask"] is masks[i] for i in masks)
    assert not all(torch.equal(opt.state_dict()["state"][i]["prunekit_mask"], masks[i]) for i in masks)


def test_loading_state_for_another_model_is_an_error():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5)
    train(model, opt, batches(1))
    state = opt.state_dict()
    other = pruning.SGDSparse(small_net().named_parameters(), lr=0.1, target_sparsity=0.5,
                              keywords_no_sparse=["bias", "6."])
    with pytest.raises(PrunekitError, match=r"mask for '6.weight'"):
        other.load_state_dict(state)


def test_lr_scheduler_works():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=0.5, sparse_step=4,
                            frequency=2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for data in batches(5):
        train(model, opt, [data])
        sched.step()
    assert opt.param_groups[0]["lr"] < 0.1 and opt.sparsity()[1] == pytest.approx(0.5, abs=0.01)


# -- attach and Prune ---------------------------------------------------------------------------------------
def test_attach_any_optimizer():
    model = small_net()
    opt = pruning.attach(torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9), model.named_parameters(),
                         target_sparsity=0.7, sparse_step=4, frequency=2)
    assert isinstance(opt, torch.optim.RMSprop) and type(opt).__name__ == "RMSpropSparse"
    train(model, opt, batches(6))
    assert opt.sparsity()[1] == pytest.approx(0.7, abs=0.01)
    for name, p in model.named_parameters():
        if name in opt.pruning.masks:
            assert (p[~opt.pruning.masks[name]] == 0).all()
            assert (opt.state[p]["square_avg"][~opt.pruning.masks[name]] == 0).all(), "grads of pruned are zeroed"


def test_attach_at_target_zero_matches_base():
    ref, mine = small_net(), small_net()
    base = torch.optim.RMSprop(ref.parameters(), lr=1e-3)
    sparse = pruning.attach(torch.optim.RMSprop(mine.parameters(), lr=1e-3), mine.named_parameters())
    train(ref, base, batches(3))
    train(mine, sparse, batches(3))
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mine.parameters()))


def test_attach_with_named_param_optimizer():
    model = small_net()
    opt = pruning.attach(torch.optim.Adagrad(model.named_parameters(), lr=0.01), special_sparsity_dict={"6.weight": 0.5})
    train(model, opt, batches(1))
    assert opt.plan.names == ["6.weight"] and opt.sparsity()[1] == 0.5


def test_prune_model_level_api():
    model = small_net()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = pruning.Prune(model, pretrain_step=1, sparse_step=4, frequency=2,
                           prune_dict={"3.weight": 0.5, "6.weight": 0.75}, balance="fix", bank_size=8, optimizer=sgd)
    for data in batches(7):
        train(model, sgd, [data])
        pruner.prune()
    per, _ = pruner.sparsity()
    assert per == {"3.weight": 0.5, "6.weight": 0.75}
    state = pruner.state_dict()
    again = pruning.Prune(model, pretrain_step=1, sparse_step=4, frequency=2,
                          prune_dict={"3.weight": 0.5, "6.weight": 0.75}, balance="fix", bank_size=8)
    again.load_state_dict(state)
    assert again.engine.step_count == 7


# -- errors from the torch entry points ------------------------------------------------------------------------
TORCH_ERROR_ROWS = [
    (dict(target_sparsity=2.0), ValueError, r"target_sparsity must be in \[0, 1\); got 2.0"),
    (dict(target_sparisty=0.5), TypeError, r"unknown argument 'target_sparisty' \(did you mean 'target_sparsity'\?\)"),
    (dict(special_sparsity_dict={"conv1_weight": 0.5}), ValueError, r"did you mean"),
    (dict(frequency=0), ValueError, r"frequency must be >= 1"),
    (dict(momentum=-1), ValueError, r"Invalid momentum value: -1"),
]


@pytest.mark.parametrize("kwargs,error,message", TORCH_ERROR_ROWS)
def test_sgd_sparse_bad_input(kwargs, error, message):
    model = small_net()
    with pytest.raises(error, match=message):
        pruning.SGDSparse(model.named_parameters(), lr=0.1, **kwargs)


def test_name_options_without_names_is_an_error():
    with pytest.raises(ValueError, match="need parameter names"):
        pruning.SGDSparse(small_net().parameters(), lr=0.1, special_sparsity_dict={"x": 0.5})


def test_nan_weights_raise_at_prune_event():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, pretrain_step=1)
    train(model, opt, batches(1))
    with torch.no_grad():
        model[6].weight[0, 0] = float("nan")
    with pytest.raises(PrunekitError, match=r"'6.weight' holds NaN or inf at step 1"):
        train(model, opt, batches(1))


def test_plan_is_printable():
    opt = pruning.SGDSparse(small_net().named_parameters(), lr=0.1, target_sparsity=0.5)
    text = str(opt.plan)
    assert "6.weight" in text and "0.5000" in text and "dense" in text


def test_deepcopy_keeps_working():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5)
    both = copy.deepcopy({"m": model, "o": opt})
    train(both["m"], both["o"], batches(1))
    assert both["o"].sparsity()[1] == 0.5 and opt.sparsity()[1] == 0.0


def test_macs_report():
    model = small_net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, keywords_no_sparse=["bias", "0."])
    train(model, opt, batches(1))
    report = pruning.macs(model, torch.randn(1, 3, 8, 8))
    rows = {r["name"]: r for r in report.per_layer}
    assert rows["0"]["dense"] == 8 * 8 * 8 * 3 * 9
    assert rows["6"]["dense"] == 256 * 32 and rows["6"]["effective"] == 256 * 32 * 0.5
    assert report.dense == sum(r["dense"] for r in report.per_layer)
    assert 0 < report.pruning_rate < 0.5


def test_param_group_added_later_warns():
    model = small_net()
    opt = pruning.SGDSparse(list(model.parameters())[:4], lr=0.1, param_name=model.named_parameters(),
                            target_sparsity=0.5)
    with pytest.warns(UserWarning, match="added after SGDSparse was built is not pruned"):
        opt.add_param_group({"params": [model[6].weight]})


def _train_side_by_side(*runs, steps):
    """The same batches through each ``(model, optimizer)``, a StepLR each (halving every 3 steps)."""
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5) for _, opt in runs]
    for data in batches(steps):
        for (model, opt), sched in zip(runs, schedulers):
            train(model, opt, [data])
            sched.step()


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
                                    dict(momentum=0.5, dampening=0.1, maximize=True)])
def test_compiled_step_matches_eager(kwargs):
    pytest.importorskip("torch._inductor")
    prune = dict(target_sparsity=0.8, pretrain_step=1, sparse_step=4, frequency=2, pattern="bank4")
    a, b = small_net(), small_net()
    eager = pruning.SGDSparse(a.named_parameters(), lr=0.05, **prune, **kwargs)
    fused = pruning.SGDSparse(b.named_parameters(), lr=0.05, compile_step=True, **prune, **kwargs)
    _train_side_by_side((a, eager), (b, fused), steps=9)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p == 0, q == 0), name
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name
    assert fused.pruning.step_count == 9 and fused.sparsity()[1] == pytest.approx(0.75, abs=1e-6)
    assert fused._prunekit_compiled.fused_steps >= 7, "the compiled path ran (eager only before masks/buffers exist)"


@pytest.mark.parametrize("cls,kwargs", [(pruning.AdamSparse, dict(weight_decay=1e-2, amsgrad=True)),
                                        (pruning.AdamWSparse, dict(weight_decay=0.1, betas=(0.8, 0.95)))])
def test_compiled_adam_step_matches_eager(cls, kwargs):
    pytest.importorskip("torch._inductor")
    prune = dict(target_sparsity=0.8, pretrain_step=1, sparse_step=4, frequency=2)
    a, b = small_net(), small_net()
    eager = cls(a.named_parameters(), lr=1e-2, **prune, **kwargs)
    fused = cls(b.named_parameters(), lr=1e-2, compile_step=True, **prune, **kwargs)
    _train_side_by_side((a, eager), (b, fused), steps=8)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p == 0, q == 0), name
        # "0.bias" feeds a BatchNorm: its gradient is rounding noise, so Adam's normalised step on it
        # amplifies last-bit differences between the eager and the compiled math to ~1e-2
        if name != "0.bias":
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
        if name in fused.pruning.masks:  # the compiled step keeps the moments of pruned entries at 0
            pruned = ~fused.pruning.masks[name]
            assert (fused.state[q]["exp_avg"][pruned] == 0).all() and (fused.state[q]["exp_avg_sq"][pruned] == 0).all()
    assert fused._prunekit_compiled.fused_steps >= 6
    assert int(fused.state[next(iter(b.parameters()))]["step"]) == 8
