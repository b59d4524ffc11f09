"""The seed's MNIST examples run in a tiny configuration, so they cannot rot."""

import importlib.util
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


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SMALL = ["--dataset", "synthetic", "--epochs", "4", "--train-subset", "256", "--batch-size", "32"]


def run_with(python, script, *args, cwd, env=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run([python, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_keras_and_tensorflow1_examples(tmp_path):
    out = run_with(sys.executable, "keras_pruning_simple.py", *SMALL, "--out", "k.keras", cwd=tmp_path,
                   env={"KERAS_BACKEND": "tensorflow"})
    assert "sparsity 0.9500" in out and os.path.exists(tmp_path / "k.keras")
    out = run_with(sys.executable, "tensorflow1_pruning_simple.py", *SMALL, cwd=tmp_path)
    assert "sparsity 0.9500" in out
    for extra in ([], ["--fix"]):
        out = run_with(sys.executable, "tensorflow1_pruning_simple_resume.py", *SMALL, *extra, cwd=tmp_path)
        assert "every zero of the loaded model is still zero: True" in out


MXNET_PYTHON = os.environ.get("PRUNEKIT_MXNET_PYTHON", os.path.join(ROOT, ".venv-mxnet", "bin", "python"))


@pytest.mark.skipif(not os.path.exists(MXNET_PYTHON), reason="no MXNet environment (scripts/setup.sh creates it)")
def test_mxnet_examples(tmp_path):
    out = run_with(MXNET_PYTHON, "mxnet_pruning_simple.py", *SMALL, cwd=tmp_path)
    assert "sparsity 0.9500" in out
    for extra in ([], ["--fix"]):
        out = run_with(MXNET_PYTHON, "mxnet_pruning_simple_resume.py", *SMALL, *extra, cwd=tmp_path)
        assert "every zero of the loaded model is still zero: True" in out
