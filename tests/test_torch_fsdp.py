"""FSDP2 (``fully_shard``: DTensor shards) on 2 and 4 gloo processes on CPU, and distributed checkpoints.

Each spawned job runs many checks and returns the failures it found (process start-up dominates):

* the sharded selection (``prunekit.torch.distributed.event_masks``) equals the single-process reference
  (``core.masks``) on integer-valued weights (many ties) with uneven and empty shards, every pattern, with
  and without earlier masks, float32 and float64, ``Global()`` across sharded and plain tensors; a pattern
  whose blocks would straddle shards is an error naming the sharding it needs; NaN on one rank's shard
  raises on every rank;
* training under FSDP2 ends bit-identical (weights and masks) to a single-process run;
* ``torch.distributed.checkpoint`` of model and optimizer under FSDP2 and DDP, saved on 2 ranks mid-ramp
  and resumed on 2, 4 and 1 ranks, ends bit-identical to the run that never stopped; a full (unsharded)
  optimizer state dict of the FSDP2 run loads into a plain single-process optimizer with whole masks.

Runs on different numbers of ranks are comparable bit for bit because the data-parallel sum is made
exact: every rank computes the same batch, rank 0's loss is scaled by the number of ranks (a power of 2)
and the others' by 0, so the gradient FSDP/DDP average is exactly the single-process one.
"""

import os
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")

SCHEDULE = dict(target_sparsity=0.75, pretrain_step=2, sparse_step=6, frequency=2)
STEPS, SAVE_AT = 12, 5


def _net(seed=0):
    torch.manual_seed(seed)
    # dim 0 of 8, 10 and 6 rows: even, uneven and (on 4 ranks: 2, 2, 2, 0) an empty shard
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(128, 10), torch.nn.ReLU(), torch.nn.Linear(10, 6))


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 4, 4, 4, generator=g), torch.randint(0, 6, (8,), generator=g)


def _optimizer(kind, model, pattern):
    import prunekit.torch as pruning
    args = dict(SCHEDULE, pattern=pattern)
    if ":" in pattern:
        args["target_sparsity"] = 0.5  # N:M ends at 1 - N/M
    if kind == "sgd":
        return pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, **args)
    opt = pruning.AdamSparse(model.named_parameters(), lr=0.01, **args)
    opt._prunekit_native = None  # torch's own Adam arithmetic, as torch runs it on the DTensor shards
    return opt


def _train(model, opt, start, stop, scale):
    for step in range(start, stop):
        x, y = _batch(step)
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(model(x), y) * scale).backward()
        opt.step()


def _reference(kind, pattern, steps=STEPS):
    """The single-process run (no process group needed), weights and masks by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _net()
        opt = _optimizer(kind, model, pattern)
    _train(model, opt, 0, steps, 1.0)
    _reference.sparsity = opt.sparsity()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, dict(opt.pruning.masks)


def _full(t):
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def _compare(label, got_params, got_masks, want_params, want_masks):
    fails = []
    if set(got_masks) != set(want_masks):
        fails.append(f"{label}: masks for {sorted(got_masks)}, expected {sorted(want_masks)}")
    for name, mask in want_masks.items():
        if name in got_masks and not torch.equal(_full(got_masks[name]), mask):
            fails.append(f"{label}: mask of {name} differs")
    for name, p in want_params.items():
        if not torch.equal(_full(got_params[name]).detach(), p):
            fails.append(f"{label}: weight {name} differs")
    return fails


# -- the checks, run inside each process ------------------------------------------------------------------

def _shard(t, mesh):
    """``t`` as a DTensor sharded on dim 0 (torch's chunking), sliced locally: no collective."""
    from torch.distributed.tensor import DTensor, Shard
    pieces = torch.chunk(t, mesh.size(), dim=0)
    rank = mesh.get_local_rank()
    piece = pieces[rank] if rank < len(pieces) else t.narrow(0, t.shape[0], 0)
    return DTensor.from_local(piece.contiguous(), mesh, [Shard(0)], run_check=False, shape=t.shape, stride=t.stride())


def _check_selection(mesh, world, trials=3):
    import numpy as np
    from torch.distributed.tensor import Shard

    from prunekit.core import masks as ref
    from prunekit.core.patterns import NM, BankBalanced, Block, Unstructured
    from prunekit.errors import PlanError
    from prunekit.torch import _select
    from prunekit.torch import distributed as D

    fails = []
    g = torch.Generator().manual_seed(7)
    shapes = [(7, 8), (10, 8, 3, 3), (6, 4), (8, 8), (3, 12)]
    patterns = [Unstructured(), NM(2, 4), BankBalanced(4), Block(1, 2), Block(2, 2)]
    checked = 0
    # trial 0: integers (ties everywhere), float32; 1: integers, float64, pruned weights left non-zero
    # (ranked first all the same); 2: normal floats
    for trial in range(trials):
        dtype = torch.float64 if trial == 1 else torch.float32
        weights = [torch.randn(shape, generator=g, dtype=dtype) if trial == 2
                   else torch.randint(-3, 4, shape, generator=g).to(dtype) for shape in shapes]
        for s1, s2 in ((0.5, None), (0.3, 0.8), (0.9, None)):
            items, wants = [], []  # one event for every tensor and pattern: the rounds run together
            for w in weights:
                for pattern in patterns:
                    if pattern.check(tuple(w.shape)) or D.check_sharding("w", _shard(w, mesh), pattern):
                        continue
                    prior_np, wt = None, w.clone()
                    if s2 is not None:
                        prior_np = ref.reference_mask(wt.numpy(), s1, pattern)
                        if trial != 1:
                            wt[~torch.from_numpy(prior_np)] = 0
                    sparsity = s2 if s2 is not None else s1
                    want = ref.reference_mask(wt.numpy(), sparsity, pattern, prior_np)
                    prior = None if prior_np is None else _shard(torch.from_numpy(prior_np), mesh)
                    label = f"{pattern!r} {tuple(w.shape)} {dtype} trial {trial} s={sparsity} prior={s2 is not None}"
                    items.append((label, _shard(wt, mesh), sparsity, pattern, prior))
                    wants.append(_shard(torch.from_numpy(want), mesh))
            got = D.event_masks(items)
            for (label, *_), want in zip(items, wants):
                checked += 1
                mask = got[label]
                if tuple(mask.placements) != (Shard(0),) or not torch.equal(mask.to_local(), want.to_local()):
                    fails.append(f"select {label}")
    # Global(): sharded and plain tensors together, ties across tensors
    for trial in range(2):
        ws = [torch.randint(-2, 3, s, generator=g).float() for s in ((7, 8), (3, 5), (10, 4))]
        for priors in (None, "nested"):
            prior_np = None if priors is None else ref.reference_global_masks([w.numpy() for w in ws], 0.4)
            want = ref.reference_global_masks([w.numpy() for w in ws], 0.7, prior_np)
            params = [_shard(ws[0], mesh), ws[1], _shard(ws[2], mesh)]
            pri = None
            if prior_np is not None:
                pri = [_shard(torch.from_numpy(prior_np[0]), mesh), torch.from_numpy(prior_np[1]),
                       _shard(torch.from_numpy(prior_np[2]), mesh)]
            got = D.event_masks([], (["a", "b", "c"], params, 0.7, pri))
            checked += 1
            for name, w_mask in zip("abc", want):
                if not np.array_equal(_full(got[name]).numpy(), w_mask):
                    fails.append(f"global trial {trial} priors={priors}: {name} differs")
    # blocks that would straddle shards: a clear error, the same on every rank
    bad = _shard(torch.randn(10, 8), mesh)
    problem = D.check_sharding("fc.weight", bad, Block(2, 2)) if world > 1 else "n/a"
    if world > 1 and (problem is None or "multiples of 2" not in problem or "fc.weight" not in problem):
        fails.append(f"Block(2, 2) on 10 rows over {world} ranks: {problem!r}")
    if world > 1:
        try:
            D.check_plan([(type("S", (), {"name": "fc.weight", "pattern": Block(2, 2)})(), bad)])
            fails.append("check_plan accepted blocks that straddle shards")
        except PlanError:
            pass
    # a whole mask loaded for a sharded parameter is sliced to this rank's rows; a sharded one for a plain
    # parameter is gathered
    whole = torch.rand(7, 3, generator=g) > 0.5
    sliced = D.as_local_mask(whole, _shard(torch.zeros(7, 3), mesh))
    if not torch.equal(sliced.to_local(), _shard(whole, mesh).to_local()):
        fails.append("a whole mask was not sliced to this rank's shard")
    if not torch.equal(D.as_local_mask(_shard(whole, mesh), torch.zeros(7, 3)), whole):
        fails.append("a sharded mask for a plain parameter was not gathered")
    # NaN on rank 0's shard only: every rank raises (no rank waits forever in a collective)
    w = torch.randn(8, 8)
    w[0, 0] = float("nan")
    try:
        D.event_masks([("w", _shard(w, mesh), 0.5, Unstructured(), None)])
        fails.append("NaN on one shard was not reported on this rank")
    except _select.NonFiniteWeights as error:
        if error.args[0] != ["w"]:
            fails.append(f"NaN error names {error.args[0]}")
    if checked < 25 * trials:
        fails.append(f"only {checked} selections checked")
    return fails


def _fsdp(model, world, mesh=None):
    from torch.distributed.fsdp import fully_shard
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _check_training(world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    fails = []
    runs = [("sgd", "unstructured", None), ("sgd", "global", None), ("adam", "2:4", None), ("sgd", "bank4", None)]
    if world == 4:  # HSDP: 2 replicas of 2 shards (placements Replicate(), Shard(0))
        runs.append(("sgd", "global", init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))))
    for kind, pattern, mesh in runs:
        want_params, want_masks = _reference(kind, pattern)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _fsdp(_net(), world, mesh)
            opt = _optimizer(kind, model, pattern)
        scale = float(world) if dist.get_rank() == 0 else 0.0
        _train(model, opt, 0, STEPS, scale)
        params = dict(model.named_parameters())
        if mesh is not None and tuple(params["3.weight"].placements) != (Replicate(), Shard(0)):
            fails.append(f"HSDP placements are {params['3.weight'].placements}")
        fails += _compare(f"fsdp {kind} {pattern}{' hsdp' if mesh else ''}", params, opt.pruning.masks, want_params,
                          want_masks)
        if opt.sparsity() != _reference.sparsity:  # counted over the shards, summed over the ranks
            fails.append(f"fsdp {kind} {pattern}: sparsity() {opt.sparsity()} != {_reference.sparsity}")
        # pruned entries' gradients are 0 after backward (the hook runs after FSDP's reduce-scatter)
        x, y = _batch(99)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, mask in opt.pruning.masks.items():
            grad = params[name].grad
            if grad is not None and bool((grad.to_local()[~mask.to_local()] != 0).any()):
                fails.append(f"fsdp {kind} {pattern}: gradient of pruned entries of {name} is not 0")
    import prunekit.torch as pruning
    # a step at learning rate 0 (warm-up) counts on every rank, also on those whose gradient shards are
    # empty (2 rows on 4 ranks): only a step whose gradients are 0 on every rank is DCP's state-making one
    # (the check's `grad.any()` on a DTensor reduces over the ranks; a local test would split the ranks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = _fsdp(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)), world)
        opt = pruning.SGDSparse(tiny.named_parameters(), lr=0.0, target_sparsity=0.5, pretrain_step=1)
    tiny(torch.ones(3, 4)).sum().backward()
    opt.step()
    if opt.pruning.step_count != 1:
        fails.append(f"a step at lr 0 with non-zero gradients on some ranks counted {opt.pruning.step_count} here")
    # restore_sparsity + fix_sparsity on a sharded model that holds zeros: masks = weights != 0, kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _net()
        with torch.no_grad():
            for p in net.parameters():
                p[p.abs() < 0.05] = 0
        want = {n: p.detach() != 0 for n, p in net.named_parameters() if p.dim() > 1}
        model = _fsdp(net, world)
        opt = pruning.SGDSparse(model.named_parameters(), lr=0.05, restore_sparsity=True, fix_sparsity=True)
    _train(model, opt, 0, 2, float(world) if dist.get_rank() == 0 else 0.0)
    for name, mask in want.items():
        got = opt.pruning.masks.get(name)
        if got is None or not torch.equal(got.full_tensor(), mask):
            fails.append(f"restore_sparsity under fsdp: mask of {name} is not weight != 0")
        elif not torch.equal(dict(model.named_parameters())[name].full_tensor() != 0, mask):
            fails.append(f"restore_sparsity under fsdp: {name} lost or gained zeros")
    return fails


def _build(kind, world):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "fsdp":
            model = _fsdp(_net(), world)
            opt = _optimizer("sgd", model, "global")
        else:
            model = torch.nn.parallel.DistributedDataParallel(_net())
            opt = _optimizer("sgd", model.module, "bank4")
    return model, opt


def _state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def _check_full_state_dict(model, opt, want_masks):
    """A full (unsharded) state dict of the FSDP2 run loads into a plain single-process optimizer: the masks
    come out whole (what one exports after sharded training)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _net()
        plain_opt = _optimizer("sgd", plain, "global")
    set_optimizer_state_dict(plain, plain_opt, full)
    got = plain_opt.pruning.masks
    if plain_opt.pruning.step_count != STEPS or set(got) != set(want_masks):
        return [f"full state dict: step {plain_opt.pruning.step_count}, masks for {sorted(got)}"]
    return [f"full state dict: mask of {n} differs" for n, m in want_masks.items()
            if type(got[n]) is not torch.Tensor or not torch.equal(got[n], m)]


def _check_checkpoints(world, ckpt_dir, save):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    fails = []
    scale = float(world) if dist.get_rank() == 0 else 0.0
    for kind, pattern in (("fsdp", "global"), ("ddp", "bank4")):
        want_params, want_masks = _reference("sgd", pattern)
        path = os.path.join(ckpt_dir, kind)
        model, opt = _build(kind, world)
        module = model if kind == "fsdp" else model.module
        if save:
            _train(model, opt, 0, SAVE_AT, scale)
            dcp.save(_state(model, opt), checkpoint_id=path)
            _train(model, opt, SAVE_AT, STEPS, scale)  # the run that never stopped
            fails += _compare(f"{kind} uninterrupted on {world}", dict(module.named_parameters()), opt.pruning.masks,
                              want_params, want_masks)
            if kind == "fsdp":
                fails += _check_full_state_dict(model, opt, want_masks)
            model, opt = _build(kind, world)
            module = model if kind == "fsdp" else model.module
        state = _state(model, opt)
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        if opt.pruning.step_count != SAVE_AT:
            fails.append(f"{kind} resumed on {world}: step {opt.pruning.step_count}, expected {SAVE_AT}")
        _train(model, opt, SAVE_AT, STEPS, scale)
        fails += _compare(f"{kind} saved on 2, resumed on {world}", dict(module.named_parameters()), opt.pruning.masks,
                          want_params, want_masks)
    return fails


def _worker(rank, world, init_file, out_dir, ckpt_dir, jobs):
    sys.path.insert(0, os.path.dirname(__file__))
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # this process only (gloo's, FSDP's notes)
    warnings.filterwarnings("ignore", category=FutureWarning)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    fails = []
    try:
        if "select" in jobs:
            fails += _check_selection(init_device_mesh("cpu", (world,)), world)
        if "train" in jobs:
            fails += _check_training(world)
        if "save" in jobs or "resume" in jobs:
            fails += _check_checkpoints(world, ckpt_dir, save="save" in jobs)
    except Exception as error:  # reported, not hung: the other ranks fail their collectives too
        import traceback
        fails.append(f"rank {rank}: {traceback.format_exc()[-3000:]}")
        raise error
    finally:
        torch.save(fails, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _spawn(tmp_path, world, ckpt_dir, jobs):
    # fork: the children start with torch, DTensor, FSDP and DCP imported here once (a spawned process
    # spends ~10 s importing them on a busy 2-core machine); nothing here has started threads of its own
    import prunekit.torch  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    out = tmp_path / f"out{world}"
    out.mkdir()
    mp.start_processes(_worker, args=(world, str(out / "init"), str(out), str(ckpt_dir), jobs), nprocs=world,
                       join=True, start_method="fork")
    fails = []
    for r in range(world):
        fails += torch.load(out / f"rank{r}.pt", weights_only=True)
    return fails


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dcp")


def test_fsdp2_two_ranks_select_train_and_save(tmp_path, checkpoint_dir):
    assert _spawn(tmp_path, 2, checkpoint_dir, ("select", "train", "save")) == []


def test_fsdp2_four_ranks_select_train_and_resume(tmp_path, checkpoint_dir):
    if not (checkpoint_dir / "fsdp").exists():
        pytest.skip("needs the checkpoint the two-rank test writes")
    assert _spawn(tmp_path, 4, checkpoint_dir, ("select", "train", "resume")) == []


def test_resume_on_one_rank(tmp_path, checkpoint_dir):
    if not (checkpoint_dir / "fsdp").exists():
        pytest.skip("needs the checkpoint the two-rank test writes")
    assert _spawn(tmp_path, 1, checkpoint_dir, ("resume",)) == []


def test_an_engine_pickled_before_fsdp2_support_still_prunes():
    import prunekit.torch as pruning

    model = torch.nn.Linear(8, 8)
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5)
    engine = opt.pruning
    state = engine.__getstate__()
    del state["_sharded"]  # what an engine pickled by an earlier version holds
    del engine._sharded
    engine.__setstate__(state)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    assert opt.sparsity()[1] == 0.5
