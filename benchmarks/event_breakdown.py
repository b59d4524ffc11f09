"""Where the time of a compiled unstructured prune event goes, per phase, on ResNet-50's weights.

Both implementations behind ``compile_step=True`` on the same tensors (torchvision resnet50 shapes, every
conv/linear weight of 16K+ entries, previous masks at 50%, the event prunes 1/64 more):

* native (``prunekit.core.native``, CPUs with AVX2): each phase summed over all tensors on one thread,
  then the whole selection on ``--threads`` threads;
* inductor (``CompiledPruneEvent`` with ``native = False``): each phase of one call for all tensors;

and the grouped patterns' selection alone (every conv/linear weight whose input axis divides): 2:4 by
both paths, banks of 64 natively (the first event, and one that prunes one more entry per bank) and by
the eager path; and the block scores of Block(4, 4) both ways, with the selection over them.

    python benchmarks/event_breakdown.py [--repeats 10] [--threads 2] [--json results.json]

Prints a table and writes JSON. Medians over ``--repeats``; masks are written into the same buffers
every time (a real event allocates new ones).
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torchvision

from prunekit.core import native
from prunekit.core.masks import prune_count
from prunekit.torch import _select
from prunekit.torch.compiled import CompiledPruneEvent


def _weights():
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    ws = [p.detach().clone().view(-1) for _, p in model.named_parameters()
          if p.dim() > 1 and p.numel() >= CompiledPruneEvent.MIN_SIZE]
    priors = []
    for w in ws:  # the previous event's masks at 50%, their pruned weights 0.0 as the engine leaves them
        keep = w.abs() > w.abs().median()
        w.mul_(keep)
        priors.append(keep)
    counts = [prune_count(0.5 + 1 / 64, w.numel()) for w in ws]
    return ws, priors, counts


class _Timed:
    """Calls through to ``target``'s attributes, adding each call's time to ``totals[name]``."""

    def __init__(self, target, totals, names):
        self._target, self._totals, self._names = target, totals, names

    def __getattr__(self, name):
        fn = getattr(self._target, name)
        if name not in self._names:
            return fn

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self._totals[name] = self._totals.get(name, 0.0) + time.perf_counter() - start
            return out
        return timed


def native_phases(ws, priors, counts, repeats, threads):
    lib = native.kernels()
    if lib is None:
        return None
    keys = [w.numpy().view(np.uint32) for w in ws]
    pri = [p.view(torch.uint8).numpy() for p in priors]
    outs = [np.empty(w.numel(), np.uint8) for w in ws]
    runs = []
    for _ in range(repeats):
        totals = {}
        timed = _Timed(lib, totals, {"pk_bracket", "pk_scan", "pk_mask"})
        rank = native.rank_band

        def timed_rank(*args):
            start = time.perf_counter()
            out = rank(*args)
            totals["rank"] = totals.get("rank", 0.0) + time.perf_counter() - start
            return out
        native.rank_band = timed_rank
        try:
            start = time.perf_counter()
            for k, c, p, o in zip(keys, counts, pri, outs):
                if not native._select_one(timed, k, c, p, o):
                    raise RuntimeError("a tensor fell back to the exact path: the breakdown would be wrong")
            totals["one thread, all"] = time.perf_counter() - start
        finally:
            native.rank_band = rank
        start = time.perf_counter()
        native.select_masks([w.numpy() for w in ws], counts, pri, outs, threads=threads)
        totals[f"{threads} threads, all"] = time.perf_counter() - start
        runs.append(totals)
    labels = {"pk_bracket": "sample histogram + bracket", "pk_scan": "count below + collect the range",
              "rank": "rank the range (np.partition)", "pk_mask": "mask pass"}
    return {labels.get(k, k): statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}


def inductor_phases(ws, priors, counts, repeats):
    event = CompiledPruneEvent()
    event.native = False
    totals = {}
    wrapped = {name: getattr(event, name) for name in ("_sample", "_counts", "_masks")}
    positions, bracket = _select._true_positions, _select._bracket

    def wrap(fn, label):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
            return out
        return timed
    items = [(w, c, p, []) for w, c, p in zip(ws, counts, priors)]
    for _ in range(3):  # compile, warm up
        event(items, zero_weights=False)
    event._sample, event._counts, event._masks = (wrap(wrapped["_sample"], "sample pass"),
                                                  wrap(wrapped["_counts"], "counting pass (flags)"),
                                                  wrap(wrapped["_masks"], "mask pass"))
    _select._true_positions = wrap(positions, "range positions (nonzero)")
    _select._bracket = wrap(bracket, "bracket histograms")
    runs = []
    try:
        for _ in range(repeats):
            totals.clear()
            start = time.perf_counter()
            decided = event(items, zero_weights=False)
            totals["all"] = time.perf_counter() - start
            if len(decided) != len(items):
                raise RuntimeError("a tensor fell back to the eager path: the breakdown would be wrong")
            runs.append(dict(totals))
    finally:
        _select._true_positions, _select._bracket = positions, bracket
    return {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}


def _timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def grouped(repeats, threads):
    from prunekit.core import BankBalanced, Block

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    out = {}
    for m in (4, 64):
        ws = [p.detach() for _, p in model.named_parameters() if p.dim() > 1 and p.shape[1] % m == 0]
        numpy_ws = [w.numpy() for w in ws]
        outs = [np.empty(w.shape, np.uint8) for w in ws]
        entries = sum(w.numel() for w in ws)
        if m == 4:
            event = CompiledPruneEvent()
            counts = torch.tensor([2.0] * len(ws))
            out[f"2:4, inductor ({entries} entries)"] = _timed(lambda: event._groups(ws, None, counts, [4] * len(ws)),
                                                               repeats)
            if native.kernels() is not None:
                out["2:4, native"] = _timed(lambda: native.group_masks(numpy_ws, [4] * len(ws), [2] * len(ws), None,
                                                                       outs, threads), repeats)
            continue
        half = prune_count(0.5, 64)
        pattern = BankBalanced(64)
        masks = [_select.tensor_mask(w, 0.5, pattern) for w in ws]  # the previous event's
        priors = [m.numpy().view(np.uint8) for m in masks]
        pruned = [w * p for w, p in zip(numpy_ws, priors)]
        if native.kernels() is not None:
            out[f"banks of 64, native, first event to 50% ({entries} entries)"] = _timed(
                lambda: native.group_masks(numpy_ws, [64] * len(ws), [half] * len(ws), None, outs, threads), repeats)
            out["banks of 64, native, one more per bank"] = _timed(
                lambda: native.group_masks(pruned, [64] * len(ws), [half + 1] * len(ws), priors, outs, threads),
                repeats)
        out["banks of 64, eager, one more per bank"] = _timed(
            lambda: [_select.tensor_mask(torch.from_numpy(w), (half + 1) / 64, pattern, m)
                     for w, m in zip(pruned, masks)], max(1, repeats // 3))
    # blocks of 4x4: the float64 block scores dominated the eager event; the native pass makes them
    pattern = Block(4, 4)
    ws = [p.detach() for _, p in model.named_parameters() if p.dim() > 1 and p.shape[0] % 4 == 0 and p.shape[1] % 4 == 0]
    entries = sum(w.numel() for w in ws)
    layouts = [pattern.layout(tuple(w.shape)) for w in ws]
    out[f"blocks 4x4, eager scores ({entries} entries)"] = _timed(
        lambda: [_select._scores(w, layout) for w, layout in zip(ws, layouts)], max(1, repeats // 3))
    if native.kernels() is not None:
        out["blocks 4x4, native scores"] = _timed(
            lambda: native.block_scores([w.numpy() for w in ws], [(4, 4)] * len(ws), None, threads), repeats)
    scores = [_select._scores(w, layout) for w, layout in zip(ws, layouts)]
    out["blocks 4x4, selection over the scores"] = _timed(
        lambda: [_select._select(sc, prune_count(0.5, sc.shape[1]), None) for sc in scores], repeats)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/event_breakdown.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ws, priors, counts = _weights()
    results = {"native": native_phases(ws, priors, counts, args.repeats, args.threads),
               "inductor": inductor_phases(ws, priors, counts, args.repeats),
               "grouped": grouped(args.repeats, args.threads)}
    print(f"{len(ws)} tensors, {sum(w.numel() for w in ws)} entries\n")
    print("| path | phase | ms |\n|---|---|---|")
    for path, phases in results.items():
        if phases is None:
            print(f"| {path} | not available here (no AVX2 CPU or C compiler) | |")
            continue
        for phase, ms in phases.items():
            print(f"| {path} | {phase} | {ms:.1f} |")
    meta = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
            "tensors": len(ws), "entries": sum(w.numel() for w in ws)}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
