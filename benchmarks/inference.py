"""Dense vs sparse inference latency on CPU, beside the ideal speed-up (dense MACs / effective MACs).

For each model, pattern and batch size: weights pruned to the target with prunekit's masks (random
weights: latency does not depend on what was learned), ``sparsify_for_inference`` picks a kernel per
layer by measurement, then whole-model latencies are measured side by side (medians, alternating).

    python benchmarks/inference.py [--models linear4096,seed-cnn,resnet50] [--batches 1,64]
                                   [--threads 2] [--json benchmarks/results/inference.json]

ResNet-50 runs at batch 1 by default: at batch 64 one dense forward takes seconds on 2 cores and the
unfolded patches of its early convs need gigabytes, so `--resnet-batches 1,64` opts in.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torchvision

import prunekit.torch as pruning
from prunekit.core import Block, Unstructured
from prunekit.torch import _select
from prunekit.torch.models import SeedCNN

SETTINGS = [("unstructured", s, Unstructured()) for s in (0.5, 0.8, 0.9, 0.95, 0.98)] + \
           [("Block(1,4)", 0.9, Block(1, 4)), ("Block(4,4)", 0.9, Block(4, 4))]


def build(name):
    torch.manual_seed(0)
    if name == "linear4096":
        return torch.nn.Linear(4096, 4096), (4096,)
    if name == "seed-cnn":
        return SeedCNN(), (1, 28, 28)
    if name == "resnet50":
        return torchvision.models.resnet50(), (3, 224, 224)
    raise SystemExit(f"unknown model {name!r}")


@torch.no_grad()
def prune(model, sparsity, pattern):
    for name, p in model.named_parameters():
        if p.dim() >= 2 and pattern.check(tuple(p.shape)) is None:
            p.mul_(_select.tensor_mask(p, sparsity, pattern))
    return model


def latency(fns, repeats, min_seconds=1.0):
    """Median ms of each function, timed in alternation."""
    times = [[] for _ in fns]
    for f in fns:
        f()
    start = time.perf_counter()
    while min(len(t) for t in times) < repeats or time.perf_counter() - start < min_seconds:
        for f, t in zip(fns, times):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        if len(times[0]) >= 200:
            break
    return [statistics.median(t) * 1e3 for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="linear4096,seed-cnn,resnet50")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--resnet-batches", default="1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settings", default=None,
                        help="comma-separated subset, e.g. 'unstructured-0.95,Block(4,4)-0.9' (default: all)")
    parser.add_argument("--json", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| model | batch | pattern | sparsity | dense ms | sparse ms | speed-up | ideal | layers sparse |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        batches = args.resnet_batches if model_name == "resnet50" else args.batches
        for batch in [int(b) for b in batches.split(",")]:
            for label, sparsity, pattern in SETTINGS:
                if args.settings and f"{label}-{sparsity}" not in args.settings.split(","):
                    continue
                model, shape = build(model_name)
                model = prune(model, sparsity, pattern).eval()
                x = torch.randn(batch, *shape)
                macs = pruning.macs(model, x[:1])
                fast, report = pruning.sparsify_for_inference(model, x)
                with torch.no_grad():
                    dense_ms, sparse_ms = latency([lambda: model(x), lambda: fast(x)], args.repeats)
                    err = float((fast(x) - model(x)).norm() / model(x).norm())
                chosen = [r["chosen"] for r in report]
                row = {"model": model_name, "batch": batch, "pattern": label, "sparsity": sparsity,
                       "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
                       "ideal_speedup": macs.dense / macs.effective, "relative_error": err,
                       "layers_sparse": sum(c != "dense" for c in chosen), "layers": len(chosen),
                       "per_layer": report}
                rows.append(row)
                print(f"| {model_name} | {batch} | {label} | {sparsity:.2f} | {dense_ms:.2f} | {sparse_ms:.2f} | "
                      f"{row['speedup']:.2f}x | {row['ideal_speedup']:.1f}x | {row['layers_sparse']}/{row['layers']} |",
                      flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2, default=str)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
