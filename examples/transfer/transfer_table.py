"""The sparse-transfer table of docs/results.md: one backbone pruned to 95% on Fashion-MNIST classes 0-4
(the zoo's ``seed-cnn-fashion-mnist-0to4-95``), fine-tuned on classes 5-9 and on the 8x8 digits, beside
the same network trained dense on classes 0-4 and the same network from scratch, same epochs each.

    nice -n 10 python examples/transfer/transfer_table.py     # writes benchmarks/results/transfer.json

The dense backbone is trained here with the zoo entry's own recipe at target 0 (``prunekit train``);
every row is one run of ``examples/transfer/classify.py``, whose command is stored beside its result.
"""

import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import classify  # noqa: E402

from prunekit import zoo  # noqa: E402

SPARSE = "seed-cnn-fashion-mnist-0to4-95"
RUNS = os.path.join(ROOT, "runs", "transfer")
DENSE_DIR = os.path.join(RUNS, "dense-0to4")
# (label, dataset, extra classify.py flags): the same flags for the three backbones of a row group
TARGETS = [
    ("Fashion-MNIST 5-9, 30,000 images", "fashion-mnist:5-9", ["--epochs", "1", "--batch-size", "128"]),
    ("Fashion-MNIST 5-9, first 500 images", "fashion-mnist:5-9",
     ["--epochs", "10", "--batch-size", "50", "--train-subset", "500"]),
    ("digits (8x8 upsampled to 28x28), 1,437 images", "digits", ["--epochs", "10", "--batch-size", "64"]),
]


def dense_backbone():
    """The dense twin of the zoo entry: its recipe with ``--target-sparsity 0``."""
    path = os.path.join(DENSE_DIR, "checkpoint.pt")
    command = shlex.split(zoo.info(SPARSE).recipe)
    command[command.index("--target-sparsity") + 1] = "0"
    if not os.path.exists(os.path.join(DENSE_DIR, "summary.json")):
        from prunekit.cli import main as cli
        print(f"[transfer] dense backbone: {shlex.join(command)}", flush=True)
        if cli(command[1:] + ["--out", DENSE_DIR, "--quiet"]):
            raise SystemExit("training the dense backbone failed")
    with open(os.path.join(DENSE_DIR, "summary.json")) as f:
        accuracy = json.load(f)["final_test_acc"]
    return path, shlex.join(command), accuracy


def main():
    dense_path, dense_command, dense_accuracy = dense_backbone()
    sources = [("sparse backbone (95%, zoo)", ["--backbone", SPARSE]),
               ("dense backbone", ["--backbone", os.path.relpath(dense_path, ROOT)]),
               ("from scratch", ["--backbone", SPARSE, "--from-scratch"])]
    rows = []
    for label, dataset, flags in TARGETS:
        for kind, source in sources:
            tag = f"{dataset.replace(':', '_')}-{len(rows)}"
            argv = source + ["--dataset", dataset, *flags, "--seed", "0", "--threads", "2", "--quiet",
                             "--json", os.path.join(RUNS, f"{tag}.json")]
            print(f"[transfer] {label} / {kind}: python examples/transfer/classify.py {shlex.join(argv)}", flush=True)
            os.chdir(ROOT)
            summary = classify.run(classify.parser().parse_args(argv))
            rows.append({"target": label, "backbone": kind, "final_test_acc": summary["final_test_acc"],
                         "backbone_sparsity_before": summary["backbone_sparsity_before"],
                         "backbone_sparsity_after": summary["backbone_sparsity_after"],
                         "same_zeros": summary["same_zeros"], "steps": summary["steps"],
                         "command": "python examples/transfer/classify.py " + shlex.join(argv[:-2])})
            print(f"[transfer]   test accuracy {summary['final_test_acc']:.4f}, backbone sparsity "
                  f"{summary['backbone_sparsity_before']:.6f} -> {summary['backbone_sparsity_after']:.6f}", flush=True)
    entry = zoo.info(SPARSE)
    result = {"sparse_backbone": {"name": SPARSE, "recipe": entry.recipe, "top1_classes_0_4": entry.metrics["top1"],
                                  "sparsity": entry.sparsity},
              "dense_backbone": {"command": dense_command, "top1_classes_0_4": dense_accuracy}, "rows": rows}
    out = os.path.join(ROOT, "benchmarks", "results", "transfer.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n| target | backbone | test acc | backbone sparsity before -> after | same zeros |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['backbone']} | {r['final_test_acc']:.4f} | {r['backbone_sparsity_before']:.4f} -> "
              f"{r['backbone_sparsity_after']:.4f} | {r['same_zeros']} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
