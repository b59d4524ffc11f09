"""File size of a pruned ResNet-50: torch.save(state_dict) vs prunekit.torch.save_sparse, and reload time.

    python benchmarks/checkpoint_size.py [--json benchmarks/results/checkpoint_size.json]

Weights are torchvision's resnet50 shapes pruned with prunekit's unstructured masks (all conv and
linear weights), zeroed as prunekit's optimizers do (+0.0); the last row zeroes with ``w * mask``
instead, which leaves -0.0 for negative weights, kept exactly at one extra bit per zero. The reload is
checked bit for bit.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import torchvision

import prunekit.torch as pruning
from prunekit.core import Unstructured
from prunekit.torch import _select
from prunekit.torch.engine import zero_pruned_


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="benchmarks/results/checkpoint_size.json")
    args = parser.parse_args()
    rows = []
    print("| sparsity, zeroed by | torch.save MB | save_sparse MB | ratio | save s | load s | bit-identical |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity, how in ((0.0, "prunekit"), (0.5, "prunekit"), (0.9, "prunekit"), (0.95, "prunekit"),
                              (0.98, "prunekit"), (0.95, "w * mask")):
            torch.manual_seed(0)
            model = torchvision.models.resnet50()
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() >= 2:
                        mask = _select.tensor_mask(p, sparsity, Unstructured())
                        p.mul_(mask) if how == "w * mask" else zero_pruned_([p], [mask])
            plain, sparse = os.path.join(tmp, "plain.pt"), os.path.join(tmp, "sparse.safetensors")
            torch.save(model.state_dict(), plain)
            t0 = time.perf_counter()
            pruning.save_sparse(model, sparse)
            t1 = time.perf_counter()
            back = pruning.load_sparse(sparse)
            t2 = time.perf_counter()
            exact = all(torch.equal(v, back[k]) for k, v in model.state_dict().items())
            row = {"sparsity": sparsity, "zeroed_by": how, "torch_save_bytes": os.path.getsize(plain),
                   "save_sparse_bytes": os.path.getsize(sparse), "save_s": t1 - t0, "load_s": t2 - t1,
                   "bit_identical": exact}
            row["ratio"] = row["save_sparse_bytes"] / row["torch_save_bytes"]
            rows.append(row)
            print(f"| {sparsity:.2f}, {how} | {row['torch_save_bytes'] / 1e6:.1f} | {row['save_sparse_bytes'] / 1e6:.1f} | "
                  f"{row['ratio']:.1%} | {row['save_s']:.2f} | {row['load_s']:.2f} | {exact} |", flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
