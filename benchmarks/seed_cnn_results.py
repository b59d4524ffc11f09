"""Accuracy of the seed CNN on Fashion-MNIST, dense and pruned, with the issue's recipe.

Recipe: 3 dense + 6 ramp + 3 fine-tune epochs, batch 128, SGD momentum 0.9, lr 0.05 cosine, weight
decay 5e-5; conv2, conv3 and linear1 pruned (conv1, biases and BN dense). Each row runs
``prunekit train`` with the flags printed beside it.

    python benchmarks/seed_cnn_results.py [--rows dense,u90,u95,u98,bank16,nm24] [--json ...]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

ROWS = {
    "dense": ["--target-sparsity", "0"],
    "u90": ["--target-sparsity", "0.90"],
    "u95": ["--target-sparsity", "0.95"],
    "u98": ["--target-sparsity", "0.98"],
    "bank16": ["--target-sparsity", "0.95", "--pattern", "bank16"],
    "nm24": ["--pattern", "2:4"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--threads", default="2")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--json", default="benchmarks/results/seed_cnn_fashion_mnist.json")
    args = parser.parse_args()
    results = []
    for key in args.rows.split(","):
        out = os.path.join(args.out, key)
        cmd = ["prunekit", "train", "--dataset", "fashion-mnist", *ROWS[key], "--threads", args.threads,
               "--out", out, "--quiet"]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "prunekit", *cmd[1:]], check=True)
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        results.append({"row": key, "command": shlex.join(cmd), "final_test_acc": s["final_test_acc"],
                        "best_test_acc": s["best_test_acc"], "sparsity": s["sparsity"],
                        "per_tensor_sparsity": s["per_tensor_sparsity"], "pruning_rate": s["pruning_rate"],
                        "ms_per_step": s["history"][-1]["ms_per_step"]})
    print("\n| row | final acc | best acc | sparsity (pruned tensors) | MACs pruning rate | command |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['final_test_acc']:.4f} | {r['best_test_acc']:.4f} | {r['sparsity']:.4f} | "
              f"{r['pruning_rate']:.4f} | `{r['command']}` |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
