"""Seed CNN on Fashion-MNIST pruned to 95% by each framework's example (12 epochs: 3 dense, 6 ramp, 3 fine-tune).

    python benchmarks/frameworks_results.py [--frameworks keras,tf1,mxnet] [--json ...]

Runs each command shown in the table (MXNet with .venv-mxnet's python) and reads the final test
accuracy and sparsity from its output.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
RUNS = {
    "keras": (sys.executable, "keras_pruning_simple.py", {"KERAS_BACKEND": "tensorflow"}),
    "keras-torch": (sys.executable, "keras_pruning_simple.py", {"KERAS_BACKEND": "torch"}),
    "tf1": (sys.executable, "tensorflow1_pruning_simple.py", {}),
    "mxnet": (os.path.join(ROOT, ".venv-mxnet", "bin", "python"), "mxnet_pruning_simple.py", {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", default="keras,tf1,mxnet")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--json", default="benchmarks/results/frameworks_fashion_mnist.json")
    args = parser.parse_args()
    rows = []
    for name in args.frameworks.split(","):
        python, script, env = RUNS[name]
        cmd = [os.path.join("examples", "mnist", script), "--dataset", "fashion-mnist", "--epochs", str(args.epochs),
               "--target-sparsity", "0.95"]
        shown = " ".join(f"{k}={v}" for k, v in env.items()) + (" " if env else "") + "python " + shlex.join(cmd)
        print("$", shown, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([python, os.path.join(ROOT, cmd[0]), *cmd[1:]], capture_output=True, text=True,
                                 cwd=tmp, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **env))
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"{name} failed")
        epochs = re.findall(r"epoch (\d+): test accuracy ([0-9.]+), sparsity ([0-9.]+)", out.stdout)
        acc = [float(a) for _, a, _ in epochs]
        rows.append({"framework": name, "command": shown, "final_test_acc": acc[-1], "best_test_acc": max(acc),
                     "sparsity": float(epochs[-1][2]), "epochs": len(epochs)})
        print(rows[-1], flush=True)
    print("\n| framework | final test acc | best test acc | sparsity | command |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['framework']} | {r['final_test_acc']:.4f} | {r['best_test_acc']:.4f} | {r['sparsity']:.4f} | "
              f"`{r['command']}` |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
