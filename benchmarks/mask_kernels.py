"""Ways to keep pruned entries at zero after an SGD step, timed side by side on ResNet-50's parameters.

Each row is one SGD (momentum 0.9, foreach) step plus a way of zeroing the pruned entries, relative
to the bare SGD step measured in the same run. It explains prunekit's choice (integer view times the
mask's bytes: exact, 1 byte per parameter) and what faster options would cost.

    python benchmarks/mask_kernels.py [--repeats 30] [--threads 2] [--json ...]
"""

import argparse
import json
import os
import statistics
import time

import torch
import torchvision


def _compiled_variant(params, grads, bufs, masks):
    """torch's own functional SGD and ``params *= masks`` compiled into one graph (inductor fuses them)."""
    from torch.optim.sgd import sgd

    @torch.compile(dynamic=False)
    def step(ps, gs, bs, ms):
        sgd(ps, gs, bs, weight_decay=0.0, momentum=0.9, lr=0.01, dampening=0.0, nesterov=False, maximize=False,
            foreach=True)
        torch._foreach_mul_(ps, ms)
    start = time.perf_counter()
    step(params, grads, bufs, masks)
    print(f"compiled the fused step in {time.perf_counter() - start:.1f} s")
    return lambda: step(params, grads, bufs, masks)


def _prunekit_compiled(params, grads, bufs, masks):
    """What ``SGDSparse(..., compile_step=True)`` runs: uint8 masks, weights and momentum kept by ``where``."""
    from prunekit.torch.compiled import _masked_sgd

    step = torch.compile(_masked_sgd, dynamic=False)
    lr = torch.tensor(0.01)
    hyper = dict(weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False, maximize=False)
    start = time.perf_counter()
    step(params, grads, bufs, masks, lr, **hyper)
    print(f"compiled prunekit's step in {time.perf_counter() - start:.1f} s")
    return lambda: step(params, grads, bufs, masks, lr, **hyper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/mask_kernels.json")
    parser.add_argument("--compiled", action="store_true", help="add the torch.compile variant (compiles ~20 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = [p.detach().clone() for p in torchvision.models.resnet50().parameters()]
    grads = [torch.randn_like(p) for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    bool_masks = [torch.rand_like(p) > 0.9 for p in params]
    float_masks = [m.float() for m in bool_masks]
    int_views = [p.view(torch.int32) for p in params]
    byte_masks = [m.view(torch.uint8) for m in bool_masks]

    def sgd():
        torch._foreach_mul_(bufs, 0.9)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-0.01)

    def fused_float():  # an own SGD update with the mask fused in: needs 4-byte masks and own math
        torch._foreach_mul_(bufs, 0.9)
        torch._foreach_add_(bufs, grads)
        torch._foreach_addcmul_(params, bufs, float_masks, value=-0.01)

    compiled = _compiled_variant(params, grads, bufs, bool_masks) if args.compiled else None
    compiled_u8 = _compiled_variant(params, grads, bufs, byte_masks) if args.compiled else None
    ours = _prunekit_compiled(params, grads, bufs, byte_masks) if args.compiled else None
    variants = {
        "SGD step alone": (sgd, 0),
        "+ params *= bool mask (foreach)": (lambda: (sgd(), torch._foreach_mul_(params, bool_masks)), 1),
        "+ params *= float mask (foreach)": (lambda: (sgd(), torch._foreach_mul_(params, float_masks)), 4),
        "+ int32 view *= mask bytes (prunekit)": (lambda: (sgd(), torch._foreach_mul_(int_views, byte_masks)), 1),
        "+ grads *= float mask, then step": (lambda: (torch._foreach_mul_(grads, float_masks), sgd()), 4),
        "own update, float mask fused (addcmul)": (fused_float, 4),
    }
    if compiled is not None:
        variants["torch.compile(functional SGD + bool mask)"] = (compiled, 1)
        variants["torch.compile(functional SGD + uint8 mask)"] = (compiled_u8, 1)
        variants["torch.compile(SGD + uint8 mask, where; prunekit)"] = (ours, 1)
    times = {name: [] for name in variants}
    # rounds of short blocks: a compiled kernel's OpenMP threads spin for a moment after it returns and
    # slow whatever is timed right after; the first call of each block is not timed
    for _ in range(max(1, args.repeats // 5)):
        for name, (fn, _) in variants.items():
            fn()
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["SGD step alone"])
    rows = [{"variant": n, "ms": statistics.median(t) * 1e3, "ratio": statistics.median(t) / base,
             "mask_bytes_per_param": variants[n][1]} for n, t in times.items()]
    print("| variant | ms | vs SGD step | mask bytes/param |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ms']:.1f} | {r['ratio']:.2f}x | {r['mask_bytes_per_param']} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
