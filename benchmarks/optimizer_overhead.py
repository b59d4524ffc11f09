"""Step-time and memory overhead of the pruning optimizers against torch.optim's, on ResNet-50's parameters.

The first rows are the defaults (no flags): SGDSparse, AdamSparse and AdamWSparse against torch.optim.SGD,
Adam and AdamW (foreach, the default on CPU), for every pattern. Measured side by side in one run (rounds of
short blocks of each optimizer's steps, medians reported), on torchvision's resnet50 shapes (25.6M
parameters) with random gradients, SGD momentum 0.9.

Between prune events a pruning optimizer's step is the base step (element-wise updates leave pruned
entries at 0 when their gradients are 0); the gradients of pruned entries are zeroed during backward()
by a hook per tensor. "grad mask ms" times that hook work for all tensors, and "per-iteration ratio" is
(step + grad mask) / base step: what a training iteration pays beyond the base optimizer.

    python benchmarks/optimizer_overhead.py [--repeats 40] [--threads 2] [--compiled] [--adam] [--json results.json]

Targets (issues 2 and 13): non-prune step <= 1.10x the base step, amortized at frequency=100 <= 1.20x, prune
event <= 3x one base step, extra memory <= 1 byte per parameter.
"""

import argparse
import json
import platform
import statistics
import time

import torch
import torchvision

import prunekit.torch as pruning
from prunekit.core import native
from prunekit.torch.engine import mask_nbytes


def _params(seed):
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    named = [(n, p) for n, p in model.named_parameters()]
    for _, p in named:
        p.grad = torch.randn_like(p) * 1e-3
    return model, named


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


FAMILIES = {"sgd": (torch.optim.SGD, pruning.SGDSparse, dict(lr=0.01, momentum=0.9)),
            "adam": (torch.optim.Adam, pruning.AdamSparse, dict(lr=1e-3)),
            "adamw": (torch.optim.AdamW, pruning.AdamWSparse, dict(lr=1e-3, weight_decay=0.01))}


def _grad_mask_seconds(engine, named, repeats=5):
    """What the backward hooks of every pruned tensor cost per iteration (they run as grads accumulate)."""
    params = dict(named)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for name in engine.masks:
            engine._mask_grad(name, params[name])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(repeats, pattern, compile_step=False, family="sgd"):
    base_cls, sparse_cls, hyper = FAMILIES[family]
    _, base_named = _params(0)
    _, named = _params(0)
    _, ramp_named = _params(0)
    base = base_cls([p for _, p in base_named], **hyper)
    target = None if ":" in pattern else 0.9  # N:M fixes its own sparsity
    sparse = sparse_cls(named, **hyper, target_sparsity=target, pattern=pattern, pretrain_step=0, sparse_step=0,
                        compile_step=compile_step)
    # every step of this one is a prune event in the middle of a ramp: each raises the sparsity by 1/64
    # (a linear ramp), so a bank of 64 prunes one more entry per event, as in a ramp of a few thousand
    # steps with frequency=100; an unstructured tensor prunes 1.6% more of its entries
    rounds = max(1, repeats // 5)
    ramp_steps = max(40, 3 + 4 * rounds + 2)
    ramping = sparse_cls(ramp_named, **hyper, target_sparsity=target, pattern=pattern,
                         init_sparsity=0.0 if target is None else max(0.0, 0.9 - ramp_steps / 64),
                         pretrain_step=0, sparse_step=ramp_steps, frequency=1, exponent=1.0,
                         compile_step=compile_step)
    sparse.step()  # step 0: the one prune event; every later step is a plain masked step
    for _ in range(3):
        base.step()
        sparse.step()
        ramping.step()
    # rounds of short blocks, not strict alternation: a compiled kernel's OpenMP threads keep spinning for
    # a moment after it returns and slowed the eager SGD step timed right after it by up to 1.5x. The
    # first step of each block is not timed.
    base_times, sparse_times, ramp_times = [], [], []
    for _ in range(rounds):
        for opt, times, count in ((base, base_times, 5), (sparse, sparse_times, 5), (ramping, ramp_times, 3)):
            opt.step()
            times.extend(_time(opt.step) for _ in range(count))
    sgd = statistics.median(base_times)
    step = statistics.median(sparse_times)
    event = statistics.median(ramp_times) - step
    grad_mask = _grad_mask_seconds(sparse.pruning, named)
    n_params = sum(p.numel() for _, p in named)
    amortized = (99 * step + (step + event)) / 100
    return {
        "optimizer": f"{sparse_cls.__name__} vs {base_cls.__name__}",
        "pattern": repr(sparse.plan.specs[0].pattern) + (" compile_step" if compile_step else " (default)"),
        "params": n_params,
        "base_step_ms": sgd * 1e3,
        "sparse_step_ms": step * 1e3,
        "step_ratio": step / sgd,
        "grad_mask_ms": grad_mask * 1e3,
        "iteration_ratio": (step + grad_mask) / sgd,
        "prune_event_ms": event * 1e3,
        "event_ratio": event / sgd,
        "amortized_ratio_f100": amortized / sgd,
        "mask_bytes_per_param": mask_nbytes(sparse.pruning) / n_params,
        "sparsity": sparse.sparsity()[1],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patterns", default="unstructured,bank64,2:4,block4x4")
    parser.add_argument("--compiled", action="store_true", help="also measure compile_step=True (every pattern)")
    parser.add_argument("--adam", action="store_true",
                        help="also AdamSparse and AdamWSparse (every pattern; with --compiled, Adam compiled too: ~1 min)")
    parser.add_argument("--json", default="benchmarks/results/optimizer_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = ["sgd", "adam", "adamw"] if args.adam else ["sgd"]
    rows = [measure(args.repeats, p, family=f) for f in families for p in args.patterns.split(",")]
    if args.compiled:
        rows.extend(measure(args.repeats, p, compile_step=True) for p in args.patterns.split(","))
        if args.adam:
            rows.append(measure(args.repeats, "unstructured", compile_step=True, family="adam"))
    header = ("optimizer", "pattern", "base step ms", "sparse step ms", "step ratio", "grad mask ms",
              "per-iteration ratio", "prune event ms", "event / base step", "amortized (f=100)", "mask B/param")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['optimizer']} | {r['pattern']} | {r['base_step_ms']:.1f} | {r['sparse_step_ms']:.1f} | {r['step_ratio']:.2f}x | "
              f"{r['grad_mask_ms']:.1f} | {r['iteration_ratio']:.2f}x | {r['prune_event_ms']:.0f} | {r['event_ratio']:.1f}x | {r['amortized_ratio_f100']:.2f}x | "
              f"{r['mask_bytes_per_param']:.2f} |")
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
            "processor": platform.processor(), "repeats": args.repeats,
            # compile_step events on CPU use prunekit.core.native's kernels when they build here
            "native_kernels": native.kernels() is not None}
    import os
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
