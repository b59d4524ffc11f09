"""The detection table of docs/results.md: CenterNet on the zoo's dense small ResNet, trained dense and with
its backbone pruned to 80% (a cubic ramp over the first half of the steps, or the first quarter, then those
zeros kept), the same recipe otherwise (same data, batches, seed, steps), evaluated with pycocotools on the
same test canvases.

    nice -n 10 python examples/detection/detection_table.py     # writes benchmarks/results/detection.json
    nice -n 10 python examples/detection/detection_table.py zoo80   # one row again (dense, sparse80,
                                                                    # sparse80-ramp25, zoo80)

The last row starts from the zoo's ``small-resnet-fashion-mnist-80`` (the backbone pruned to 80% on
Fashion-MNIST classification) and keeps its zeros (``restore_sparsity=True, fix_sparsity=True``), as the
seed fine-tuned its sparse pre-trained models.

Each row is one run of ``examples/detection/train.py``; its command is stored beside its result, its
summary in runs/detection/, its weights in runs/detection/*.pt.
"""

import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import train  # noqa: E402

RUNS = os.path.join("runs", "detection")
# (label, run name, flags)
ROWS = [("dense", "dense", ["--target-sparsity", "0"]),
        ("backbone 80%, ramp over the first half", "sparse80", ["--target-sparsity", "0.8", "--ramp-fraction", "0.5"]),
        ("backbone 80%, ramp over the first quarter", "sparse80-ramp25", ["--target-sparsity", "0.8",
                                                                          "--ramp-fraction", "0.25"]),
        ("zoo backbone 80%, zeros kept", "zoo80", ["--backbone", "small-resnet-fashion-mnist-80",
                                                   "--keep-backbone-zeros"])]
COMMON = ["--seed", "0", "--threads", "1"]


def main(argv=None):
    only = set(argv if argv is not None else sys.argv[1:])
    os.chdir(ROOT)
    out = os.path.join(ROOT, "benchmarks", "results", "detection.json")
    rows = []
    if os.path.exists(out):
        with open(out) as f:
            rows = [r for r in json.load(f)["rows"] if only and r["run"] not in only]
    for label, tag, flags in ROWS:
        if only and tag not in only:
            continue
        argv = flags + COMMON + ["--quiet", "--json", os.path.join(RUNS, f"{tag}.json"),
                                 "--save", os.path.join(RUNS, f"{tag}.pt")]
        command = "python examples/detection/train.py " + shlex.join(flags + COMMON)
        print(f"[detection] {label}: {command}", flush=True)
        summary, _ = train.run(train.parser().parse_args(argv), argv)
        rows.append({"label": label, "run": tag, **{k: summary[k] for k in (
            "map", "map50", "backbone_sparsity", "pruned_tensors_sparsity", "same_zeros_after_ramp", "steps",
            "ramp_steps", "train_images", "test_images", "test_boxes", "seconds")}, "command": command})
        print(f"[detection]   AP {summary['map']:.4f}, AP50 {summary['map50']:.4f}, backbone sparsity "
              f"{summary['backbone_sparsity']:.4f}, {summary['seconds']:.0f} s", flush=True)
    rows.sort(key=lambda r: [tag for _, tag, _ in ROWS].index(r["run"]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    print("\n| backbone | AP | AP50 | pruned tensors sparsity | whole backbone sparsity |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['map']:.4f} | {r['map50']:.4f} | {r['pruned_tensors_sparsity']:.4f} | "
              f"{r['backbone_sparsity']:.4f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
