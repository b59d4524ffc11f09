"""The seed's MNIST examples run in a tiny configuration, so they cannot rot."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "mnist")
TINY = ["--dataset", "digits", "--epochs", "2", "--max-steps", "6", "--batch-size", "64"]


def run(script, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_prune_then_resume_then_fix(tmp_path):
    out = run("pytorch_pruning_simple.py", *TINY, "--target-sparsity", "0.9", "--out", "pruned.pt", cwd=tmp_path)
    assert "pruning rate" in out and os.path.exists(tmp_path / "pruned.pt")
    out = run("pytorch_pruning_simple_resume.py", *TINY, "--checkpoint", "pruned.pt", "--target-sparsity", "0.95",
              cwd=tmp_path)
    assert "every zero of the loaded model is still zero: True" in out
    out = run("pytorch_pruning_simple_resume.py", *TINY, "--checkpoint", "pruned.pt", "--fix", cwd=tmp_path)
    assert "every zero of the loaded model is still zero: True" in out
