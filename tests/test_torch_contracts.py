"""Every integration contract, for every optimizer configuration, the way torch.optim tests itself.

One table of configurations (ROWS: prunekit's optimizers and ``attach`` on RMSprop and Adagrad; for-loop,
foreach and fused where torch has them) crossed with parameter dtypes, param-group layouts and devices,
run through the same checks: target 0 is the base optimizer bit for bit, step hooks fire once,
``state_dict`` round trips (also through ``torch.load(weights_only=True)`` and
``torch.distributed.checkpoint``), deepcopy and pickle, closures, GradScaler skips, LR schedulers built
before and after, resume bit-identical, and pruned entries with their gradients and state exactly 0.
The CUDA column runs where a GPU is present.
"""

import copy
import inspect
import io
import pickle
import warnings
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")

import prunekit.torch as pruning  # noqa: E402
from prunekit.errors import PlanError, PrunekitError  # noqa: E402


@dataclass(frozen=True)
class Row:
    id: str
    base: type
    kwargs: dict = field(default_factory=dict)
    sparse: type = None  # None: the base optimizer with attach()
    method: str = "magnitude"  # prunekit's method= (feedback and sr-ste let pruned entries regrow)

    def __repr__(self):
        return self.id

    @property
    def regrows(self):
        return self.method != "magnitude"


ROWS = [
    Row("sgd-forloop", torch.optim.SGD, dict(lr=0.1, momentum=0.9, foreach=False), pruning.SGDSparse),
    Row("sgd-foreach", torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True, foreach=True),
        pruning.SGDSparse),
    Row("sgd-fused", torch.optim.SGD, dict(lr=0.1, momentum=0.9, fused=True), pruning.SGDSparse),
    Row("adam-forloop", torch.optim.Adam, dict(lr=1e-2, foreach=False), pruning.AdamSparse),
    Row("adam-foreach", torch.optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2, foreach=True),
        pruning.AdamSparse),
    Row("adam-fused", torch.optim.Adam, dict(lr=1e-2, fused=True), pruning.AdamSparse),
    Row("adamw-forloop", torch.optim.AdamW, dict(lr=1e-2, foreach=False), pruning.AdamWSparse),
    Row("adamw-foreach", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, foreach=True), pruning.AdamWSparse),
    Row("adamw-fused", torch.optim.AdamW, dict(lr=1e-2, amsgrad=True, fused=True), pruning.AdamWSparse),
    Row("rmsprop-attach-forloop", torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, foreach=False)),
    Row("rmsprop-attach-foreach", torch.optim.RMSprop, dict(lr=1e-2, centered=True, foreach=True)),
    Row("adagrad-attach", torch.optim.Adagrad, dict(lr=0.1, foreach=True)),
    # the methods that keep dense weights in the state and let pruned entries regrow
    Row("sgd-foreach-feedback", torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True),
        pruning.SGDSparse, "feedback"),
    Row("adam-fused-feedback", torch.optim.Adam, dict(lr=1e-2, fused=True), pruning.AdamSparse, "feedback"),
    Row("adamw-forloop-sr-ste", torch.optim.AdamW, dict(lr=1e-2, foreach=False), pruning.AdamWSparse, "sr-ste"),
    Row("rmsprop-attach-sr-ste", torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, foreach=True), None, "sr-ste"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu", "cuda"]
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
PRUNE = dict(target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=2)  # events at 1, 3, 5


def net(dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).to(device, dtype)


def data(n, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 16, generator=g).to(device, dtype), torch.randn(6, 8, generator=g).to(device, dtype))
            for _ in range(n)]


def param_groups(model, groups):
    params = list(model.parameters())
    if groups == 1:
        return params
    return [{"params": params[:2], "lr": 0.05}, {"params": params[2:]}]


def kwargs_for(row, dtype):
    """The row's arguments; in float16 an epsilon that float16 can hold (torch's 1e-8 rounds to 0, and Adam,
    RMSprop and Adagrad then divide by zero: the base optimizers' own NaNs, not prunekit's)."""
    if dtype == torch.float16 and "eps" in inspect.signature(row.base.__init__).parameters:
        return dict(row.kwargs, eps=1e-4)
    return row.kwargs


def build(row, model, groups=1, **prune):
    named = list(model.named_parameters())
    if row.regrows:
        prune = dict(prune, method=row.method)
    kwargs = kwargs_for(row, next(model.parameters()).dtype)
    if row.sparse is None:
        return pruning.attach(row.base(param_groups(model, groups), **kwargs), named, **prune)
    return row.sparse(param_groups(model, groups), param_name=named, **kwargs, **prune)


def backward(model, x, y):
    torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()


def run(model, opt, batches, check=None):
    for x, y in batches:
        opt.zero_grad()
        backward(model, x, y)
        if check is not None:
            check(model, opt)
        opt.step()
    return model


def supported(row, dtype, device):
    """Skip what the base optimizer itself does not run (a fused kernel for a dtype, say)."""
    model = net(dtype, device)
    try:
        run(model, row.base(model.parameters(), **kwargs_for(row, dtype)), data(1, dtype, device))
    except (RuntimeError, NotImplementedError, ValueError) as e:
        pytest.skip(f"{row.id} on {device}/{dtype}: the base optimizer refuses ({str(e)[:80]})")


def assert_same(a_model, b_model, a_opt=None, b_opt=None):
    for (n, a), (_, b) in zip(a_model.named_parameters(), b_model.named_parameters()):
        assert torch.equal(a, b), n
    if a_opt is not None:
        sa, sb = a_opt.state_dict(), b_opt.state_dict()
        assert sa["state"].keys() == sb["state"].keys()
        for k in sa["state"]:
            assert sa["state"][k].keys() == sb["state"][k].keys()
            for key, value in sa["state"][k].items():
                assert torch.equal(value, sb["state"][k][key]) if torch.is_tensor(value) else value == sb["state"][k][key], key
        for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
            assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


def table(*, dtypes=DTYPES, groups=(1, 2)):
    cases = [pytest.param(row, dtype, device, g, marks=[_NO_CUDA] if device == "cuda" else [],
                          id=f"{row.id}-{str(dtype)[6:]}-{device}-{g}group{'s' if g > 1 else ''}")
             for row in ROWS for dtype in dtypes for device in DEVICES for g in groups]
    return pytest.mark.parametrize("row,dtype,device,groups", cases)


# -- the checks --------------------------------------------------------------------------------------------
@table()
def test_target_zero_is_the_base_optimizer(row, dtype, device, groups):
    supported(row, dtype, device)
    ref, mine = net(dtype, device), net(dtype, device)
    base = row.base(param_groups(ref, groups), **kwargs_for(row, dtype))
    sparse = build(row, mine, groups, target_sparsity=0.0, sparse_step=4, frequency=1)
    batches = data(5, dtype, device)
    run(ref, base, batches)
    run(mine, sparse, batches)
    assert_same(ref, mine, base, sparse)
    assert sparse.state_dict().keys() == base.state_dict().keys()


@table(dtypes=[torch.float32])
def test_step_hooks_fire_once(row, dtype, device, groups):
    for target in (0.0, 0.75):
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # patches SGD.step with torch's hooks
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
        model = net(dtype, device)
        opt = build(row, model, groups, **dict(PRUNE, target_sparsity=target))
        calls = []
        opt.register_step_pre_hook(lambda *a: calls.append("pre"))
        opt.register_step_post_hook(lambda *a: calls.append("post"))
        run(model, opt, data(2, dtype, device))
        assert calls == ["pre", "post"] * 2, (target, calls)


@table()
def test_pruned_entries_gradients_and_state_are_exactly_zero(row, dtype, device, groups):
    supported(row, dtype, device)
    model = net(dtype, device)
    opt = build(row, model, groups, **PRUNE)
    seen = []

    def check(model, opt):  # right after backward(), before step()
        for name, p in model.named_parameters():
            mask = opt.pruning.masks.get(name)
            if mask is not None:
                if row.regrows:  # the gradient at the masked weights reaches the dense weights, pruned entries too
                    assert mask.all() or p.grad[~mask].any(), f"gradient of pruned entries of {name} masked by {row.method}"
                else:
                    assert (p.grad[~mask] == 0).all(), f"gradient of pruned entries of {name} after backward()"
                seen.append(name)

    for batch in data(8, dtype, device):
        run(model, opt, [batch], check)
        for name, p in model.named_parameters():
            mask = opt.pruning.masks.get(name)
            if mask is None:
                continue
            assert (p[~mask] == 0).all(), name
            if row.regrows:  # the model holds the kept entries of the dense weights, which keep the pruned ones
                dense = opt.state[p]["prunekit_dense"]
                assert torch.equal(p[mask], dense[mask]) and (mask.all() or dense[~mask].any()), name
                continue
            for key, value in opt.state[p].items():
                if torch.is_tensor(value) and value.shape == p.shape and value.is_floating_point():
                    assert (value[~mask] == 0).all(), f"{key} of pruned entries of {name}"
    assert seen and opt.pruning.step_count == 8
    per, total = opt.sparsity()
    assert per == {"0.weight": 0.75, "2.weight": 0.75}


def _straight_and_stopped(row, dtype, device, groups):
    """9 batches; a run through all of them; a run stopped after 4 (to be checkpointed and resumed)."""
    supported(row, dtype, device)
    batches = data(9, dtype, device)
    straight, first = net(dtype, device), net(dtype, device)
    opt, opt1 = build(row, straight, groups, **PRUNE), build(row, first, groups, **PRUNE)
    run(straight, opt, batches)
    run(first, opt1, batches[:4])
    return batches, (straight, opt), (first, opt1)


@table(dtypes=[torch.float32, torch.bfloat16])
def test_resume_through_weights_only_load_is_bit_identical(row, dtype, device, groups):
    batches, (straight, opt), (first, opt1) = _straight_and_stopped(row, dtype, device, groups)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    second = net(dtype, device, seed=7)
    second.load_state_dict(ckpt["model"])
    opt2 = build(row, second, groups, **PRUNE)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.pruning.step_count == 4
    run(second, opt2, batches[4:])
    assert_same(straight, second, opt, opt2)
    assert all(torch.equal(opt.pruning.masks[k], opt2.pruning.masks[k]) for k in opt.pruning.masks)


@table(dtypes=[torch.float32])
def test_distributed_checkpoint_round_trip_resumes_bit_identically(row, dtype, device, groups, tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    batches, (straight, opt), (first, opt1) = _straight_and_stopped(row, dtype, device, groups)
    osd = get_optimizer_state_dict(first, opt1)
    assert any("prunekit_mask" in v for v in osd["state"].values())
    dcp.save({"model": get_model_state_dict(first), "optim": osd}, checkpoint_id=str(tmp_path / "ckpt"))

    second = net(dtype, device, seed=7)
    opt2 = build(row, second, groups, **PRUNE)
    state = {"model": get_model_state_dict(second), "optim": get_optimizer_state_dict(second, opt2)}
    assert opt2.pruning.step_count == 0, "the state-creating step of get_optimizer_state_dict does not count"
    dcp.load(state, checkpoint_id=str(tmp_path / "ckpt"))
    set_model_state_dict(second, state["model"])
    set_optimizer_state_dict(second, opt2, state["optim"])
    assert opt2.pruning.step_count == 4
    run(second, opt2, batches[4:])
    assert_same(straight, second, opt, opt2)


@table(dtypes=[torch.float32], groups=(2,))
def test_deepcopy_and_pickle_continue_identically(row, dtype, device, groups):
    batches = data(8, dtype, device)
    model = net(dtype, device)
    opt = build(row, model, groups, **PRUNE)
    run(model, opt, batches[:3])
    twins = [copy.deepcopy({"m": model, "o": opt}), pickle.loads(pickle.dumps({"m": model, "o": opt}))]
    run(model, opt, batches[3:])
    for twin in twins:
        assert type(twin["o"]) is type(opt)
        run(twin["m"], twin["o"], batches[3:])
        assert_same(model, twin["m"], opt, twin["o"])


@table(dtypes=[torch.float32], groups=(1,))
def test_closure(row, dtype, device, groups):
    model = net(dtype, device)
    opt = build(row, model, groups, **PRUNE)
    for x, y in data(7, dtype, device):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
        assert torch.is_tensor(loss)
        for name, p in model.named_parameters():
            if name in opt.pruning.masks:
                assert (p[~opt.pruning.masks[name]] == 0).all()
                assert row.regrows or (p.grad[~opt.pruning.masks[name]] == 0).all()
    assert opt.sparsity()[1] == 0.75


@table(dtypes=[torch.float32], groups=(1,))
def test_grad_scaler_skipped_steps_do_not_advance_the_schedule(row, dtype, device, groups):
    supported(row, dtype, device)
    model = net(dtype, device)
    opt = build(row, model, groups, target_sparsity=0.5)  # one-shot at step 0
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 8)
    for x, y in data(3, dtype, device):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        model[2].bias.grad[0] = float("inf")  # a dense tensor: no mask can hide it
        scaler.step(opt)
        scaler.update()
    assert opt.pruning.step_count == 0 and opt.sparsity()[1] == 0.0
    x, y = data(1, dtype, device, seed=5)[0]
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.pruning.step_count == 1 and opt.sparsity()[1] == 0.5


@table(dtypes=[torch.float32], groups=(2,))
def test_lr_scheduler_built_before_or_after(row, dtype, device, groups):
    for before in (False, True):
        model = net(dtype, device)
        named = list(model.named_parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" or "overridden"
            if before:
                base = row.base(param_groups(model, groups), **row.kwargs)
                sched = torch.optim.lr_scheduler.StepLR(base, step_size=2, gamma=0.5)
                opt = pruning.attach(base, named, **PRUNE, **({"method": row.method} if row.regrows else {}))
            else:
                opt = build(row, model, groups, **PRUNE)
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            for batch in data(6, dtype, device):
                run(model, opt, [batch])
                sched.step()
        assert opt.pruning.step_count == 6 and opt.sparsity()[1] == 0.75, before
        assert opt.param_groups[-1]["lr"] == pytest.approx(row.kwargs["lr"] * 0.125)


@pytest.mark.parametrize("row", ROWS[:1] + ROWS[3:4], ids=repr)
def test_positional_arguments_as_torch_optim(row):
    model = net()
    base_args = {"SGD": (0.1, 0.9, 0.0, 1e-4, True), "Adam": (1e-2, (0.8, 0.9), 1e-6, 0.01)}[row.base.__name__]
    ref, mine = net(), net()
    base = row.base(ref.parameters(), *base_args)
    sparse = row.sparse(mine.parameters(), *base_args)
    run(ref, base, data(3))
    run(mine, sparse, data(3))
    assert_same(ref, mine, base, sparse)
    with pytest.raises(TypeError, match="positional"):
        row.sparse(model.parameters(), *base_args, 1, 2, 3, 4, 5, 6)


# -- the single cases ---------------------------------------------------------------------------------------
def test_a_glob_that_reaches_only_dense_tensors_is_an_error():
    model = net()
    with pytest.raises(PlanError, match=r"'\*\.bias' matches only tensors that stay dense.*'0.bias': fewer than 2 dims"):
        pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, special_sparsity_dict={"*.bias": 0.5})


def test_fix_sparsity_with_a_ramp_and_no_restore_is_an_error():
    with pytest.raises(PrunekitError, match="restore_sparsity=True.*sparse_step=0"):
        pruning.SGDSparse(net().named_parameters(), lr=0.1, target_sparsity=0.9, sparse_step=100, fix_sparsity=True)
    opt = pruning.SGDSparse(net().named_parameters(), lr=0.1, target_sparsity=0.5, fix_sparsity=True)  # one-shot
    assert opt.plan.names == ["0.weight", "2.weight"]


def test_gradient_clipping_sees_only_kept_entries():
    model = net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.9)
    run(model, opt, data(1))
    x, y = data(1, seed=3)[0]
    opt.zero_grad()
    backward(model, x, y)
    kept = torch.cat([p.grad[opt.pruning.masks[n]] if n in opt.pruning.masks else p.grad.reshape(-1)
                      for n, p in model.named_parameters()])
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    assert float(norm) == pytest.approx(float(kept.norm()), rel=1e-6)


def test_sparse_gradients_are_masked_and_take_l1():
    emb = torch.nn.Embedding(20, 8, sparse=True)
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (30,))
    for extra in ({}, dict(L1_regularization=True, l1_strength=1e-3)):
        opt = pruning.SGDSparse(emb.named_parameters(), lr=0.1, target_sparsity=0.5, **extra)
        for _ in range(3):
            opt.zero_grad()
            emb(ids).pow(2).sum().backward()
            grad = emb.weight.grad
            if opt.pruning.masks:
                assert grad.is_sparse and (grad.to_dense()[~opt.pruning.masks["weight"]] == 0).all()
            opt.step()
        assert opt.sparsity()[1] == 0.5
    rms = torch.optim.Adagrad(emb.parameters(), lr=0.1)
    pruning.attach(rms, emb.named_parameters(), target_sparsity=0.5)
    for _ in range(2):
        rms.zero_grad()
        emb(ids).pow(2).sum().backward()
        rms.step()
        assert (emb.weight.grad.to_dense()[~rms.pruning.masks["weight"]] == 0).all()
    assert rms.sparsity()[1] == 0.5


def test_state_from_before_masks_moved_into_parameter_state_still_loads():
    model = net()
    opt = pruning.AdamSparse(model.named_parameters(), lr=1e-2, **PRUNE)
    run(model, opt, data(4))
    new = opt.state_dict()
    old = {"state": {i: {k: v for k, v in s.items() if not k.startswith("prunekit")} for i, s in new["state"].items()},
           "param_groups": [{k: v for k, v in g.items() if k != "prunekit_step"} for g in new["param_groups"]]}
    old["state"]["prunekit"] = {"step": 4, "masks": dict(opt.pruning.masks), "restored": {}}
    again = pruning.AdamSparse(model.named_parameters(), lr=1e-2, **PRUNE)
    again.load_state_dict(old)
    assert again.pruning.step_count == 4 and "prunekit" not in again.state
    assert all(torch.equal(again.pruning.masks[k], m) for k, m in opt.pruning.masks.items())


def test_weights_changed_outside_the_optimizer_are_pruned_again_at_the_next_step():
    model = net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=0.5)
    run(model, opt, data(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    run(model, opt, data(1))
    assert opt.sparsity()[0]["0.weight"] == 0.5


def test_parameters_on_two_devices_share_one_event():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device beside the CPU")
    model = net()
    model[2].to("cuda")
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, compile_step=True)
    x, y = data(1)[0]
    opt.zero_grad()
    torch.nn.functional.mse_loss(model[2](model[1](model[0](x)).cuda()).cpu(), y).backward()
    opt.step()
    assert opt.sparsity()[1] == 0.5


def test_a_copy_of_a_compile_step_optimizer_keeps_both_compiled_parts():
    model = net()
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, compile_step=True)
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert twin._prunekit_compiled is not None and type(twin._prunekit_compiled) is type(opt._prunekit_compiled)
        assert twin.pruning.compiled_event is not None and twin.pruning.compiled_event.inductor


def test_default_optimizers_take_native_events_without_compiling():
    opt = pruning.AdamSparse(net().named_parameters(), lr=0.1, target_sparsity=0.5)
    event = opt.pruning.compiled_event
    assert event is not None and not event.inductor and getattr(opt, "_prunekit_compiled", None) is None
    assert pruning.AdamSparse(net().named_parameters(), lr=0.1).pruning.compiled_event is None  # target 0: base


def _largest_relative_difference(a_model, b_model):
    return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a_model.parameters(), b_model.parameters()))


@table(dtypes=[torch.float32, torch.bfloat16], groups=(1,))
def test_the_default_step_needs_no_masking_pass(row, dtype, device, groups):
    """SGDSparse/AdamSparse/AdamWSparse run the bare base step between events (pruned weights, gradients and
    state are 0, and the updates are element-wise), or on CPU one native pass: the generic path (attach:
    masks after every update) must give the same weights and state, bit for bit, the native SGD pass too
    (torch's CPU add-with-alpha is a fused multiply-add, and so is the kernel's), and the native Adam pass
    the same within a few float32 ulps (or the difference between torch's own fused and for-loop Adam,
    where that is larger)."""
    if row.sparse is None or row.regrows:
        pytest.skip("attach rows are the generic path; a regrowing method has one step for every optimizer")
    supported(row, dtype, device)
    fast, generic = net(dtype, device), net(dtype, device)
    a = build(row, fast, groups, **PRUNE)
    b = pruning.attach(row.base(param_groups(generic, groups), **kwargs_for(row, dtype)),
                       list(generic.named_parameters()), **PRUNE)
    assert a._prunekit_elementwise and not b._prunekit_elementwise
    batches = data(20, dtype, device)
    run(fast, a, batches)
    run(generic, b, batches)
    native_step = getattr(a, "_prunekit_native", None)
    if native_step is None or native_step.steps == 0:
        assert_same(fast, generic, a, b)
        return
    assert dtype == torch.float32 and device == "cpu" and native_step.steps >= 18
    if isinstance(a, torch.optim.SGD):
        assert_same(fast, generic, a, b)
        return
    loop, fused = net(dtype, device), net(dtype, device)
    kwargs = {k: v for k, v in row.kwargs.items() if k not in ("foreach", "fused")}
    run(loop, row.base(loop.parameters(), **kwargs, foreach=False), batches)
    run(fused, row.base(fused.parameters(), **kwargs, fused=True), batches)
    # a few float32 ulps of the largest weight, or what torch's own two Adams differ by, if more
    tolerance = max(_largest_relative_difference(fused, loop), 4 * torch.finfo(torch.float32).eps)
    assert 0 < _largest_relative_difference(fast, generic) <= tolerance
    for name, p in fast.named_parameters():
        if name in a.pruning.masks:
            pruned = ~a.pruning.masks[name]
            assert (p[pruned] == 0).all() and (a.state[p]["exp_avg"][pruned] == 0).all()
            assert (a.state[p]["exp_avg_sq"][pruned] == 0).all()


def wide_net(seed=0):
    """A net whose weights are large enough (>= 16K entries) for the native prune-event kernels."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(160, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))


@table(dtypes=[torch.float32], groups=(1,))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "bank16", "block4x4"])
def test_native_events_zero_in_their_mask_pass_as_the_torch_event_does(row, dtype, device, groups, pattern):
    """On CPU the native kernels decide big tensors' masks and zero weights, optimizer state and gradients
    in the same pass: the same masks, weights, state and gradients as the torch event, bit for bit, and
    the gradients need no masking pass of their own afterwards."""
    from prunekit.core import native

    if device != "cpu" or native.kernels() is None:
        pytest.skip("the native kernels run on x86-64 CPUs with AVX2 and a C compiler")
    if row.regrows:
        pytest.skip("feedback and sr-ste select from their dense copy with the torch path")
    prune = dict(PRUNE, pattern=pattern, target_sparsity=None if ":" in pattern else PRUNE["target_sparsity"])
    models = wide_net(), wide_net()
    opts = [build(row, m, groups, **prune) for m in models]
    opts[1].pruning.compiled_event.native = False
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)) for _ in range(7)]
    grads = []

    def record(model, opt):
        grads.append([p.grad.clone() for p in model.parameters()])

    for model, opt in zip(models, opts):
        run(model, opt, batches, check=record)
    assert opts[0].pruning.compiled_event.native_events >= (1 if ":" in pattern else 2)
    assert opts[1].pruning.compiled_event.native_events == 0
    assert_same(*models, *opts)
    half = len(grads) // 2
    for a, b in zip(grads[:half], grads[half:]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # at an event inside step(), the native pass leaves the gradient masked and recorded as such
    if ":" in pattern:
        return  # N:M has one event
    model = wide_net()
    opt = build(row, model, groups, **prune)
    engine = opt.pruning
    run(model, opt, batches[:2])  # the first event, at step 1; step 2 aims higher
    backward(model, *batches[2])
    before = engine.compiled_event.native_events
    engine.prune_event(defer=True)
    assert engine.compiled_event.native_events == before + 1
    for name, p in model.named_parameters():
        if name in engine.masks and p.numel() >= engine.compiled_event.MIN_SIZE:
            assert (p.grad[~engine.masks[name]] == 0).all() and (p[~engine.masks[name]] == 0).all()
            ok = engine._grad_ok[name]
            assert ok[0]() is p.grad and ok[1] == p.grad._version and name not in engine._deferred

@table(dtypes=[torch.float32], groups=(1,))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "bank16", "block4x4", "global"])
def test_an_event_left_to_the_native_update_ends_as_one_that_zeroes(row, dtype, device, groups, pattern):
    """By default on CPU an event writes no zeros: the native update right after it writes them in the pass
    it makes anyway. Weights, state, gradients and masks end as when the event zeroes them itself, bit for
    bit, and for SGD as with torch's own step; every pruned entry is +0.0, also for a weight edited through
    ``.data`` before an event and for a parameter with no gradient at one."""
    from prunekit.core import native

    if device != "cpu" or native.kernels() is None:
        pytest.skip("the native kernels run on x86-64 CPUs with AVX2 and a C compiler")
    if row.regrows or row.sparse is None:
        pytest.skip("only prunekit's own element-wise optimizers take the native update")
    prune = dict(PRUNE, pattern=pattern, target_sparsity=None if ":" in pattern else PRUNE["target_sparsity"])
    models = [wide_net() for _ in range(3)]
    opts = [build(row, m, groups, **prune) for m in models]
    if row.kwargs.get("fused") or row.kwargs.get("amsgrad"):
        pytest.skip(f"{row.id}: torch's own step runs (the native update takes neither fused nor amsgrad)")
    zeroing = opts[1].pruning
    zeroing.before_update = lambda defer=False, by_update=False, engine=zeroing: \
        type(engine).before_update(engine, defer=defer)  # the event zeroes, the native step follows
    opts[2]._prunekit_native = None  # torch's step
    twins = [1, 2] if isinstance(opts[0], torch.optim.SGD) else [1]
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)) for _ in range(7)]
    for step, batch in enumerate(batches):
        for model, opt in zip(models, opts):
            backward(model, *batch)
            if step == 3:  # an event: one weight edited behind autograd's back, one parameter without gradient
                with torch.no_grad():
                    mask = opt.pruning.masks["0.weight"]
                    model[0].weight.data[~mask] = 7.0
                model[2].weight.grad = None
            opt.step()
        engine = opts[0].pruning
        assert not engine._deferred
        for name, p in models[0].named_parameters():
            if name in engine.masks:
                pruned = ~engine.masks[name]
                tensors = [p.detach()] + engine._state_tensors(p) + ([] if p.grad is None else [p.grad])
                assert all((_bits(t)[pruned] == 0).all() for t in tensors), name
        for i in twins:
            assert_same(models[0], models[i], opts[0], opts[i])
            for a, b in zip(models[0].parameters(), models[i].parameters()):
                assert (a.grad is None) == (b.grad is None) and (a.grad is None or torch.equal(a.grad, b.grad))
    assert opts[0]._prunekit_native.steps >= 5


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _twins(make):
    """The default optimizer and one on torch's step (``_prunekit_native = None``) on two copies of a net."""
    models = [wide_net(), wide_net()]
    opts = [make(m) for m in models]
    opts[1]._prunekit_native = None
    return models, opts


def _assert_pruned_zero(model, opt):
    engine = opt.pruning
    for name, p in model.named_parameters():
        if name in engine.masks:
            pruned = ~engine.masks[name]
            for t in [p.detach()] + [v for v in opt.state[p].values()
                                     if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape]:
                assert (_bits(t)[pruned] == 0).all(), name


def test_a_momentum_schedule_at_zero_during_an_event_keeps_pruned_weights_zero():
    """A schedule that takes SGD's momentum to 0 (OneCycleLR, CyclicLR) leaves the buffer in the state; if an
    event falls there, the native update masks the buffer too, so pruned weights stay 0 when momentum
    returns, as with torch's step (bit for bit)."""
    prune = dict(target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=2)  # events at 1, 3, 5
    models, opts = _twins(lambda m: pruning.SGDSparse(m.named_parameters(), lr=0.05, momentum=0.9, **prune))
    g = torch.Generator().manual_seed(6)
    for step in range(8):
        x, y = torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)
        for model, opt in zip(models, opts):
            for group in opt.param_groups:
                group["momentum"] = 0.0 if step == 3 else 0.9
            backward(model, x, y)
            opt.step()
            _assert_pruned_zero(model, opt)
        assert_same(models[0], models[1], opts[0], opts[1])
    assert opts[0]._prunekit_native.steps >= 6


def test_a_closure_takes_the_native_update_and_its_forward_sees_the_pruned_weights():
    """``step(closure)`` (Lightning always passes one) runs the closure once, then the native update; an
    event zeroes first, so the closure's forward pass runs on the pruned weights. Same losses, weights and
    state as torch's step, bit for bit."""
    models, opts = _twins(lambda m: pruning.SGDSparse(m.named_parameters(), lr=0.05, momentum=0.9, **PRUNE))
    g = torch.Generator().manual_seed(7)
    for _ in range(7):
        x, y = torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)
        losses = []
        for model, opt in zip(models, opts):
            def closure(model=model, opt=opt):
                for name, p in model.named_parameters():  # the forward pass sees the pruned weights
                    if name in opt.pruning.masks:
                        assert (p[~opt.pruning.masks[name]] == 0).all()
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss
            losses.append(opt.step(closure))
            _assert_pruned_zero(model, opt)
        assert torch.equal(losses[0], losses[1])
        assert_same(models[0], models[1], opts[0], opts[1])
    assert opts[0]._prunekit_native.steps >= 5


def test_l1_on_the_native_update_leaves_pruned_gradients_zero():
    """With ``L1_regularization`` the pull goes into the gradients before the native update; where a weight
    edited since the last step is not 0 at a pruned entry, the update still leaves weight, momentum and
    gradient +0.0 there. Same as torch's step, bit for bit."""
    prune = dict(PRUNE, L1_regularization=True, l1_strength=1e-3)
    models, opts = _twins(lambda m: pruning.SGDSparse(m.named_parameters(), lr=0.05, momentum=0.9, **prune))
    g = torch.Generator().manual_seed(8)
    for step in range(7):
        x, y = torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)
        for model, opt in zip(models, opts):
            backward(model, x, y)
            if step == 4:  # not an event: an edit that moves the version counter, after backward
                with torch.no_grad():
                    model[0].weight[~opt.pruning.masks["0.weight"]] = 2.0
            opt.step()
            _assert_pruned_zero(model, opt)
            for name, p in model.named_parameters():
                if name in opt.pruning.masks:
                    assert (_bits(p.grad)[~opt.pruning.masks[name]] == 0).all(), name
        assert_same(models[0], models[1], opts[0], opts[1])
    assert opts[0]._prunekit_native.steps >= 5


def test_two_parameters_on_one_storage_take_torchs_step():
    """Distinct parameters sharing one storage would be updated at once by the native update's threads;
    torch updates them one after the other, so its step runs (deterministic, as torch's)."""
    def make(model):
        model[2].weight = torch.nn.Parameter(model[0].weight.data.view(-1)[:1024].view(8, 128))  # the first's storage
        return pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9, **PRUNE)

    models, opts = _twins(make)
    batches = data(6)
    for model, opt in zip(models, opts):
        for x, y in batches:
            backward(model, torch.nn.functional.pad(x, (0, 144)), y)
            opt.step()
    assert opts[0]._prunekit_native.steps == 0
    assert_same(models[0], models[1], opts[0], opts[1])


@table(dtypes=[torch.float32], groups=(1,))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "bank16", "block4x4", "global"])
def test_events_zero_what_is_not_known_to_be_zero_and_spare_what_is(row, dtype, device, groups, pattern):
    """An event writes +0.0 wherever its mask prunes in what changed behind the optimizer's back (weights
    edited through ``.data``, gradients edited in place) and in another optimizer's state; in the state of prunekit's own element-wise
    optimizers, known to be 0.0 wherever the previous mask pruned, it need only write what it prunes anew:
    an event that prunes nothing new leaves a value planted there untouched (nothing was written)."""
    from prunekit.core import native

    if device != "cpu" or native.kernels() is None:
        pytest.skip("the native kernels run on x86-64 CPUs with AVX2 and a C compiler")
    if row.regrows:
        pytest.skip("feedback and sr-ste keep the pruned entries of their state live")
    prune = dict(pattern=pattern, target_sparsity=None if ":" in pattern else 0.75, pretrain_step=1,
                 sparse_step=4, frequency=1)
    model = wide_net()
    opt = build(row, model, groups, **prune)
    engine, own = opt.pruning, row.sparse is not None
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(6, 160, generator=g), torch.randn(6, 8, generator=g)) for _ in range(4)]
    run(model, opt, batches[:3])  # events at steps 1 and 2
    backward(model, *batches[3])
    params = dict(model.named_parameters())

    def plant():
        masks = dict(engine.masks)
        with torch.no_grad():
            for name, mask in masks.items():
                p = params[name]
                p.data[~mask] = 7.0  # through .data: no version counter moves
                p.grad[~mask] = 5.0
                for s in engine._state_tensors(p):
                    s[~mask] = 3.0
        return masks

    for again in (False, True):  # step 3's masks (more pruned), then the same masks once more
        old = plant()
        engine.prune_event()
        for name, before in old.items():
            p, now = params[name], engine.masks[name]
            assert not (now & ~before).any() and (now.equal(before) if again else True)
            assert (p[~now] == 0).all() and (p.grad[~now] == 0).all() and (p.grad[now] != 5.0).all()
            for s in engine._state_tensors(p):
                assert (s[before & ~now] == 0).all() and (s[now] != 3.0).all()
                if not own:
                    assert (s[~now] == 0).all()
                elif again:
                    assert (s[~now] == 3.0).all()
                else:
                    assert torch.isin(s[~before], torch.tensor([0.0, 3.0])).all()


# -- the methods (method=) ----------------------------------------------------------------------------------
REGROWING = [r for r in ROWS if r.regrows]


@pytest.mark.parametrize("row", REGROWING, ids=repr)
def test_regrowing_methods_bring_pruned_entries_back_and_fixed_masks_make_them_magnitude(row):
    """An entry pruned at one event can be kept at a later one (never with magnitude pruning); with
    ``fix_sparsity`` nothing can regrow, and the step is magnitude pruning's, bit for bit; a restored
    model's zeros are where its dense weights start."""
    model = net()
    opt = build(row, model, target_sparsity=0.5, pretrain_step=1, sparse_step=7, frequency=1)
    came_back = 0
    for batch in data(9):  # events at steps 1 .. 8
        before = dict(opt.pruning.masks)
        run(model, opt, [batch])
        came_back += sum(int((~before[n] & m).sum()) for n, m in opt.pruning.masks.items() if n in before)
    assert came_back > 0 and opt.sparsity()[1] == 0.5
    magnitude = Row(row.id, row.base, row.kwargs, row.sparse)
    for extra in (dict(target_sparsity=0.5), dict(restore_sparsity=True, target_sparsity=0.75, sparse_step=2,
                                                      frequency=1)):
        fixed, plain = copy.deepcopy(model), copy.deepcopy(model)
        a = build(row, fixed, fix_sparsity=True, **extra)
        b = build(magnitude, plain, fix_sparsity=True, **extra)
        run(fixed, a, data(4))
        run(plain, b, data(4))
        assert_same(fixed, plain, a, b)
    restored = build(row, model, restore_sparsity=True, target_sparsity=0.75, sparse_step=2, frequency=1)
    run(model, restored, data(4))
    assert restored.pruning.state["restored"] == {"0.weight": 0.5, "2.weight": 0.5} and restored.sparsity()[1] == 0.75


def test_method_arguments_are_checked():
    params = net().named_parameters
    with pytest.raises(PrunekitError, match=r"method must be one of \['magnitude', 'feedback', 'sr-ste'\]; got 'rigl'"):
        pruning.SGDSparse(params(), lr=0.1, target_sparsity=0.5, method="rigl")
    with pytest.raises(PrunekitError, match="sr_ste_decay=0.001 has no effect unless method='sr-ste'"):
        pruning.SGDSparse(params(), lr=0.1, target_sparsity=0.5, method="feedback", sr_ste_decay=1e-3)
    with pytest.raises(PrunekitError, match="sr_ste_decay must be a finite number >= 0; got -1"):
        pruning.SGDSparse(params(), lr=0.1, target_sparsity=0.5, method="sr-ste", sr_ste_decay=-1)
    with pytest.raises(PrunekitError, match="compile_step=True.*method='feedback'"):
        pruning.SGDSparse(params(), lr=0.1, target_sparsity=0.5, method="feedback", compile_step=True)
    opt = pruning.AdamSparse(params(), lr=0.1, target_sparsity=0.5, method="sr-ste")
    assert opt.pruning.config.sr_ste_decay == 2e-4 and opt.pruning.compiled_event is None


def test_sr_ste_decays_only_the_pruned_entries_of_the_dense_weights():
    """One SGD step at the one-shot event: SR-STE's dense weights are feedback's minus
    ``lr * decay * w`` on the pruned entries, and equal on the kept ones."""
    start = net()
    w0 = start[0].weight.detach().clone()
    dense = {}
    for method, extra in (("feedback", {}), ("sr-ste", dict(sr_ste_decay=0.5))):
        model = copy.deepcopy(start)
        opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5, method=method, **extra)
        run(model, opt, data(1))
        dense[method] = opt.state_dict()["state"][0]["prunekit_dense"]  # SGD without momentum: waiting state
        mask = opt.pruning.masks["0.weight"]
    assert torch.equal(dense["feedback"][mask], dense["sr-ste"][mask])
    torch.testing.assert_close(dense["feedback"][~mask] - dense["sr-ste"][~mask], 0.1 * 0.5 * w0[~mask])
