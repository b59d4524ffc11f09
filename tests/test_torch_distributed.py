"""Two gloo processes on CPU: DistributedDataParallel ranks end with the same masks and weights, and see the
gradients of pruned entries at 0 after backward(); ZeroRedundancyOptimizer shards a pruning optimizer and
consolidates its state (masks included) on one rank."""

import os
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")


def _worker(rank, world, init_file, out_dir, zero):
    sys.path.insert(0, os.path.dirname(__file__))
    import prunekit.torch as pruning
    from torch_helpers import small_net

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # this process only (gloo's and DDP's notes)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net = small_net()
    model = torch.nn.parallel.DistributedDataParallel(net)
    prune = dict(lr=0.05, momentum=0.9, target_sparsity=0.8, pretrain_step=2, sparse_step=6, frequency=2,
                 pattern="bank4")
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=pruning.SGDSparse,
                                      param_name=list(model.named_parameters()), **prune)
    else:
        opt = pruning.SGDSparse(model.named_parameters(), **prune)
    pruned_grads = 0.0
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(10):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 8, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        engine = (opt.optim if zero else opt).pruning
        for name, p in model.named_parameters():
            mask = engine.masks.get(name)
            if mask is not None:  # after DDP's all-reduce
                pruned_grads += float(p.grad[~mask].abs().sum())
        opt.step()
    out = {"params": {n: p.detach() for n, p in model.named_parameters()}, "pruned_grads": pruned_grads}
    if zero:
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            out["state"] = opt.state_dict()
    else:
        out.update(masks=opt.pruning.masks, sparsity=opt.sparsity()[1])
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _spawn(tmp_path, zero):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), zero), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ddp_two_gloo_ranks_agree(tmp_path):
    r0, r1 = _spawn(tmp_path, zero=False)
    assert r0["masks"].keys() == r1["masks"].keys() and r0["masks"]
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert r0["sparsity"] == r1["sparsity"] > 0.7
    assert r0["pruned_grads"] == r1["pruned_grads"] == 0.0


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_zero_redundancy_optimizer_shards_and_consolidates_masks(tmp_path):
    r0, r1 = _spawn(tmp_path, zero=True)
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    state = r0["state"]
    masks = [s["prunekit_mask"] for s in state["state"].values() if "prunekit_mask" in s]
    assert len(masks) == 3  # small_net's weights but the first conv's (its input axis, 3, does not fit bank4)
    zeros = sum(int((~m).sum()) for m in masks if not m.all())
    assert zeros > 0 and all(g["prunekit_step"] == 10 for g in state["param_groups"])
    for name, p in r0["params"].items():
        if p.dim() > 1 and p.shape[1] % 4 == 0:
            assert float((p == 0).float().mean()) == 0.75, name  # a bank of 4 prunes round(0.8 * 4) = 3
