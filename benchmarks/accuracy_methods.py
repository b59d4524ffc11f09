"""Accuracy of each pruning method (``method=``) on the seed CNN / Fashion-MNIST recipe, two seeds.

Recipe (as ``benchmarks/seed_cnn_results.py``, the issue's): 3 dense + 6 ramp + 3 fine-tune epochs, batch 128,
SGD momentum 0.9, lr 0.05 cosine, weight decay 5e-5; conv2, conv3 and linear1 pruned layer-wise, events every
steps_per_epoch / 5 steps. Each row runs ``prunekit train`` with the flags written beside it. Rows run in the
order given and the JSON is rewritten after each one, so an interrupted run keeps what finished.

    python benchmarks/accuracy_methods.py [--rows ...] [--threads 2] [--json ...]
    python benchmarks/accuracy_methods.py --table      # the markdown table of the JSON so far
"""

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

#: method -> flags; "sr-ste-d0.1": SR-STE with its decay scaled to this short recipe (the paper's 2e-4 was set
#: for ~600k ImageNet steps; here the ramp has ~2,800, so the pull on pruned weights is ~200x weaker)
METHODS = {"magnitude": [], "feedback": ["--method", "feedback"], "sr-ste": ["--method", "sr-ste"],
           "sr-ste-d0.1": ["--method", "sr-ste", "--sr-ste-decay", "0.1"]}
TARGETS = {"u98": ["--target-sparsity", "0.98"], "u95": ["--target-sparsity", "0.95"], "nm24": ["--pattern", "2:4"],
           "u90": ["--target-sparsity", "0.90"],
           # layer budgets at 98%: ERK (Evci et al.) and one global threshold, against the uniform u98 rows
           "u98erk": ["--target-sparsity", "0.98", "--pattern", "erk"],
           "u98global": ["--target-sparsity", "0.98", "--pattern", "global"],
           "dense": ["--target-sparsity", "0"]}
SEEDS = (0, 1)


def all_rows():
    """``{key: flags}`` in priority order: 98% first (both seeds, every method), then 95%, 2:4, 90%, the 98%
    layer budgets (ERK, global), dense."""
    rows = {}
    for target, flags in TARGETS.items():
        methods = ("magnitude",) if target == "dense" else list(METHODS)
        for seed in SEEDS:
            for method in methods:
                key = f"{target}-{method}-s{seed}" if target != "dense" else f"dense-s{seed}"
                rows[key] = [*flags, *METHODS[method], "--seed", str(seed)]
    return rows


def _child_cpu():
    """CPU seconds (user + system) used so far by finished child processes: unlike wall time, it does not count
    the time a run spent stopped or waiting for a core another process held."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _history(summary):
    """Per epoch: phase, training loss, test accuracy, sparsity (from the run's summary.json)."""
    return [{k: h[k] for k in ("epoch", "phase", "loss", "test_acc", "sparsity")} for h in summary["history"]]


def table(results):
    lines = ["| row | method | seed | final test acc | sparsity (pruned tensors) | training loss at the ramp's end | "
             "wall time (s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        ramp = [h["loss"] for h in r.get("history", []) if h["phase"] == "ramp"]
        loss = f"{ramp[-1]:.3f}" if ramp else "-"
        lines.append(f"| {r['target']} | {r['method']} | {r['seed']} | {r['final_test_acc']:.4f} | "
                     f"{r['sparsity']:.4f} | {loss} | {wall} |")
    by = {}
    for r in results:
        by.setdefault((r["target"], r["method"]), []).append(r["final_test_acc"])
    lines += ["", "| row | method | mean final test acc (seeds) |", "|---|---|---|"]
    for (target, method), accs in by.items():
        lines.append(f"| {target} | {method} | {sum(accs) / len(accs):.4f} ({len(accs)}) |")
    return "\n".join(lines)


def main():
    rows = all_rows()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(rows), help="comma-separated keys, in the order to run")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--out", default="runs/methods")
    parser.add_argument("--json", default="benchmarks/results/accuracy_methods.json")
    parser.add_argument("--table", action="store_true", help="print the table of --json and stop")
    parser.add_argument("--histories", action="store_true",
                        help="add each recorded row's per-epoch history from its run directory where missing, and stop")
    parser.add_argument("--adopt", action="store_true",
                        help="record rows whose run directory already holds a finished summary.json (a run this "
                             "script started and was stopped while it ran) instead of running them again; their "
                             "wall time is not known")
    args = parser.parse_args()
    results = []
    if os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    if args.table:
        print(table(results))
        return
    if args.histories:
        for r in results:
            path = os.path.join(args.out, r["row"], "summary.json")
            if "history" not in r and os.path.exists(path):
                with open(path) as f:
                    r["history"] = _history(json.load(f))
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        return
    done = {r["row"] for r in results}
    for key in args.rows.split(","):
        if key in done:
            continue
        out = os.path.join(args.out, key)
        cmd = ["prunekit", "train", "--dataset", "fashion-mnist", *rows[key], "--threads", args.threads,
               "--out", out, "--overwrite", "--quiet"]
        if args.adopt and os.path.exists(os.path.join(out, "summary.json")):
            wall = cpu = None
        else:
            print("$", shlex.join(cmd), flush=True)
            start, used = time.perf_counter(), _child_cpu()
            subprocess.run([sys.executable, "-m", "prunekit", *cmd[1:]], check=True)
            wall, cpu = time.perf_counter() - start, _child_cpu() - used
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        target, method = key.split("-")[0], ("magnitude" if key.startswith("dense") else key.split("-", 1)[1].rsplit("-", 1)[0])
        if wall is None:  # adopted: the run must be the one this row asks for
            with open(os.path.join(out, "summary.json")) as f:
                recipe = json.load(f)["recipe"]
            asked = {"sr-ste-d0.1": "sr-ste"}.get(method, method)
            if recipe["prune"].get("method", "magnitude") != asked or recipe["seed"] != int(key.rsplit("-s", 1)[1]):
                raise SystemExit(f"{out} holds another run ({recipe}); remove it or run without --adopt")
        results.append({"row": key, "target": target, "method": method, "seed": int(key.rsplit("-s", 1)[1]),
                        "command": shlex.join(cmd), "final_test_acc": s["final_test_acc"],
                        "best_test_acc": s["best_test_acc"], "sparsity": s["sparsity"], "cpu_s": cpu,
                        "per_tensor_sparsity": s["per_tensor_sparsity"], "wall_s": wall,
                        "history": _history(s)})
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    print(table(results))


if __name__ == "__main__":
    main()
