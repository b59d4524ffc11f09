"""DistributedDataParallel with 2 gloo processes on CPU: both ranks end with the same masks and weights."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")


def _worker(rank, world, init_file, out_dir):
    sys.path.insert(0, os.path.dirname(__file__))
    import prunekit.torch as pruning
    from torch_helpers import small_net

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(small_net())
    opt = pruning.SGDSparse(model.named_parameters(), lr=0.05, momentum=0.9, target_sparsity=0.8,
                            pretrain_step=2, sparse_step=6, frequency=2, pattern="bank4")
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(10):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 8, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save({"params": {n: p.detach() for n, p in model.named_parameters()},
                "masks": opt.pruning.masks, "sparsity": opt.sparsity()[1]}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ddp_two_gloo_ranks_agree(tmp_path):
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["masks"].keys() == r1["masks"].keys() and r0["masks"]
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert r0["sparsity"] == r1["sparsity"] > 0.7
