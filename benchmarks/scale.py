"""Time and peak extra memory of one prune event, from 25M to 1B parameters (the default path, CPU).

The parameters are random float32 tensors shaped like a transformer's large linear layers: per block
``qkv (3d, d)``, ``out (d, d)``, ``mlp up (4d, d)``, ``mlp down (d, 4d)`` (12 d^2 parameters), with
d_model 1024 below 300M parameters and 2048 above, and as many blocks as the size needs. The optimizer is
``SGDSparse`` with no momentum (no optimizer state: the event's own memory is what is measured) and no
gradients. Two events are measured per size and pattern, as ``step()`` runs them (``before_update`` +
``flush_deferred``, without the SGD update): the first (sparsity 0.5, no earlier masks) and a ramp event
(0.5 -> 0.9 with the earlier masks).

Memory: each size runs in a fresh process; before an event its peak resident set is reset to the
current one (``echo 5 > /proc/self/clear_refs``) and after it ``VmHWM - VmRSS(before)`` from
``/proc/self/status`` is the peak extra memory of the event: everything the event allocated and touched,
the new masks included (the previous masks are still alive until the new ones replace them). The
process runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc returns freed blocks to the system
instead of reusing them unseen (without it a second event can read as 0 bytes). Target
(issue 14): at most the masks (1 byte per parameter) plus 5% of the parameters' bytes (0.2 byte per
float32 parameter), and event time linear in the parameter count.

    nice -n 10 python benchmarks/scale.py [--sizes 25M,50M,100M,250M,500M,1B] [--patterns unstructured,2:4]
    (a size may name its d_model: --sizes 100M@2048,250M@2048)
                                          [--threads 1] [--json benchmarks/results/scale.json]

Linux only (``/proc``). 1B parameters need ~6 GB of memory.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SIZES = {"25M": 25e6, "50M": 50e6, "100M": 100e6, "250M": 250e6, "500M": 500e6, "1B": 1e9}


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def shapes_for(size, d=None):
    """Transformer-like linear layer shapes adding up to about ``size`` parameters (d_model ``d``, by default
    1024 below 300M parameters and 2048 above)."""
    d = d or (1024 if size < 300e6 else 2048)
    blocks = max(1, round(size / (12 * d * d)))
    shapes = []
    for _ in range(blocks):
        shapes += [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]
    return d, blocks, shapes


def _parse(token):
    """``250M`` or ``250M@2048`` (d_model 2048) -> (size name, d_model or None)."""
    name, _, d = token.partition("@")
    if name not in SIZES or (d and not d.isdigit()):
        raise ValueError(f"unknown size {token!r}; accepted: {', '.join(SIZES)}, optionally @D_MODEL (250M@2048)")
    return name, int(d) if d else None


def _one(token, pattern, threads):
    """Run in a fresh process: build the parameters, run two events, print one JSON line."""
    import torch

    import prunekit.torch as pruning

    torch.set_num_threads(threads)
    size_name, d_model = _parse(token)
    d, blocks, shapes = shapes_for(SIZES[size_name], d_model)
    g = torch.Generator().manual_seed(0)
    named = []
    for i, shape in enumerate(shapes):
        w = torch.empty(shape)
        w.normal_(generator=g)
        named.append((f"layer{i}.weight", torch.nn.Parameter(w)))
    n = sum(p.numel() for _, p in named)
    ramp = dict(target_sparsity=0.9, init_sparsity=0.5, pretrain_step=0, sparse_step=2, frequency=2, exponent=1)
    if pattern == "2:4":
        ramp = dict(pretrain_step=0, sparse_step=0)  # N:M has one sparsity: one event
    opt = pruning.SGDSparse(named, lr=0.1, pattern=pattern, **ramp)
    engine = opt.pruning
    events = []
    for step in range(3):
        if not engine._event_due():
            engine.after_update(masked=True)
            continue
        rss = _status("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        engine.before_update(defer=True)
        engine.flush_deferred()
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
        engine.after_update(masked=True)
        zeros = sum(int((p == 0).sum()) for _, p in named)
        events.append({"step": step, "seconds": seconds, "peak_extra_bytes": peak - rss,
                       "peak_extra_bytes_per_param": (peak - rss) / n, "sparsity": zeros / n})
    print(json.dumps({"size": size_name, "pattern": pattern, "params": n, "d_model": d, "blocks": blocks,
                      "tensors": len(shapes), "threads": threads, "events": events}))


def _table(rows):
    lines = ["| params | d_model x blocks | pattern | event | sparsity | event s | ns / param | peak extra B / param | target B / param |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for e in r["events"]:
            kind = "first" if e["step"] == 0 else "ramp (earlier masks)"
            lines.append(f"| {r['params'] / 1e6:,.1f}M | {r['d_model']} x {r['blocks']} | {r['pattern']} | {kind} | "
                         f"{e['sparsity']:.3f} | {e['seconds']:.3f} | {e['seconds'] / r['params'] * 1e9:.2f} | "
                         f"{e['peak_extra_bytes_per_param']:.3f} | 1.200 |")
    return "\n".join(lines)


def _slopes(rows):
    """Per pattern, event kind and d_model: least-squares seconds per parameter, its intercept, and the
    range of ns/param over the sizes."""
    out = {}
    for pattern, d in sorted({(r["pattern"], r["d_model"]) for r in rows}):
        for step in (0, 2):
            pts = [(r["params"], e["seconds"]) for r in rows if r["pattern"] == pattern and r["d_model"] == d
                   for e in r["events"] if e["step"] == step]
            if len(pts) < 2:
                continue
            xs, ys = zip(*pts)
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
            per = [y / x for x, y in pts]
            out[f"{pattern}, {'first' if step == 0 else 'ramp'} event, d_model {d}"] = {"ns_per_param_fit": slope * 1e9, "intercept_s": my - slope * mx,
                                             "ns_per_param_min": min(per) * 1e9, "ns_per_param_max": max(per) * 1e9}
    return out


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for pattern, d in sorted({(r["pattern"], r["d_model"]) for r in rows}):
        for step, style in ((0, "o-"), (2, "s--")):
            pts = sorted(((r["params"] / 1e6, e) for r in rows if r["pattern"] == pattern and r["d_model"] == d
                          for e in r["events"] if e["step"] == step), key=lambda item: item[0])
            if not pts:
                continue
            label = f"{pattern}, {'first' if step == 0 else 'ramp'}, d={d}"
            left.plot([x for x, _ in pts], [e["seconds"] for _, e in pts], style, label=label)
            right.plot([x for x, _ in pts], [e["peak_extra_bytes_per_param"] for _, e in pts], style, label=label)
    right.axhline(1.2, color="red", linewidth=1, label="target: masks + 5% of params")
    left.set(xlabel="parameters (M)", ylabel="event time (s)", title="prune event time", xscale="log", yscale="log")
    right.set(xlabel="parameters (M)", ylabel="peak extra bytes / parameter", title="peak extra memory", xscale="log",
              ylim=(0, 1.5))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25M,50M,100M,250M,500M,1B")
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/scale.json")
    parser.add_argument("--plot", default="docs/scale.png", help="matplotlib PNG ('' for none)")
    parser.add_argument("--merge", help="a JSON this script wrote earlier: its rows join the table, fits and plot")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "PATTERN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(*args.one, args.threads)
        return
    load_at_start = os.getloadavg()
    rows, earlier = [], []
    if args.merge:
        with open(args.merge) as f:
            earlier = json.load(f)["rows"]
    for size in args.sizes.split(","):
        try:
            _parse(size)
        except ValueError as error:
            parser.error(str(error))
        for pattern in args.patterns.split(","):
            # every allocation of 64 KiB or more is its own mmap, returned to the system when freed: glibc's
            # default raises that threshold after frees, and memory it then keeps for reuse would let a later
            # event allocate without its resident set growing (the peak would read 0)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            done = subprocess.run([sys.executable, __file__, "--one", size, pattern, "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{size} {pattern} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print("\n".join(_table([rows[-1]]).splitlines()[2:]), flush=True)
    rows = sorted(earlier + rows, key=lambda r: (r["d_model"], r["params"], r["pattern"]))
    slopes = _slopes(rows)
    print()
    print(_table(rows))
    print()
    for key, fit in slopes.items():
        print(f"{key}: {fit['ns_per_param_fit']:.2f} ns/param fitted, intercept {fit['intercept_s'] * 1e3:.0f} ms, "
              f"per size {fit['ns_per_param_min']:.2f}..{fit['ns_per_param_max']:.2f} ns/param")
    load = os.getloadavg()
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start, "load_average_at_end": load, "threads": args.threads}
    if args.json:
        if args.merge:
            with open(args.merge) as f:
                meta = {"earlier": json.load(f)["meta"], **meta}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "fits": slopes}, f, indent=1)
    if args.plot:
        try:
            _plot(rows, args.plot)
        except ImportError:
            print("matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
