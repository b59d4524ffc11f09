"""Keras 3 (TensorFlow and PyTorch backends), TF1 graph mode and MXNet, each checked in its own process.

Every framework gets the same integer-valued weights (many ties) and must produce the masks of the numpy
reference and of the torch adapter, for every pattern (Global too, where the framework has it; Keras on
TensorFlow computes them inside an XLA-compiled step). The check scripts in tests/frameworks/ also run a
table of every optimizer with its framework's options (target 0 bit-identical to the base, exact
sparsity, pruned entries' state at 0) and the edges of issue 16: resume, restore/fix at a non-zero
restored step, L1 against a hand computation, two optimizers at once, mixed precision, XLA, EMA,
clipping and gradient accumulation. Each check prints "<name> ok"; the tests below require every line.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "frameworks"))
from common import PATTERNS, target, weights  # noqa: E402

from prunekit.core import PruneConfig, reference_mask  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
CHECKS = os.path.join(ROOT, "tests", "frameworks")
MXNET_PYTHON = os.environ.get("PRUNEKIT_MXNET_PYTHON", os.path.join(ROOT, ".venv-mxnet", "bin", "python"))


def reference():
    out = {}
    for pattern in PATTERNS:
        config = PruneConfig.from_kwargs(target_sparsity=target(pattern), pattern=pattern)
        for key, w in weights().items():
            out[f"{pattern}/{key}"] = reference_mask(w, config.target_sparsity, config.pattern)
    return out


def torch_masks():
    torch = pytest.importorskip("torch")
    from prunekit.torch import _select
    out = {}
    for pattern in PATTERNS:
        config = PruneConfig.from_kwargs(target_sparsity=target(pattern), pattern=pattern)
        for key, w in weights().items():
            out[f"{pattern}/{key}"] = _select.tensor_mask(torch.from_numpy(w), config.target_sparsity,
                                                          config.pattern).numpy()
    return out


def run_check(args, python=sys.executable, env=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run([python, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    return out.stdout


def assert_masks_match(path):
    got = dict(np.load(path))
    ref, mine = reference(), torch_masks()
    assert set(got) == set(ref)
    for key in ref:
        assert np.array_equal(got[key], ref[key]), f"{key}: differs from the numpy reference"
        assert np.array_equal(ref[key], mine[key]), f"{key}: torch differs from the numpy reference"


KERAS_CHECKS = ("table", "pruning and resume", "errors", "one kernel eager", "clipping and moments",
                "restore at a restored step", "l1")
KERAS_TF_CHECKS = ("names across save/load", "ema", "accumulation events", "two optimizers", "mixed precision", "xla")
TF1_CHECKS = ("equivalence", "table", "pruning and resume", "restore at a restored step", "two optimizers", "l1",
              "clipping", "loss scaling")
MXNET_CHECKS = ("equivalence", "table", "pruning and resume", "restore at a restored step", "l1", "two optimizers")


def assert_all_ok(out, names):
    missing = [n for n in names if not any(line.startswith(f"{n} ok") for line in out.splitlines())]
    assert not missing, f"checks that did not report ok: {missing}"
    assert "masks written" in out


needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed")


@needs_keras
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_keras(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    out = run_check([os.path.join(CHECKS, "keras_check.py"), str(tmp_path / "masks.npz")],
                    env={"KERAS_BACKEND": backend})
    expected = KERAS_CHECKS + (KERAS_TF_CHECKS if backend == "tensorflow" else ())
    assert_all_ok(out, expected)
    assert_masks_match(tmp_path / "masks.npz")


@needs_tf
def test_tf1(tmp_path):
    out = run_check([os.path.join(CHECKS, "tf1_check.py"), str(tmp_path / "masks.npz")])
    assert_all_ok(out, TF1_CHECKS)
    assert_masks_match(tmp_path / "masks.npz")


@needs_tf
def test_tf1_mirrored_strategy_two_cpus():
    assert "mirrored ok" in run_check([os.path.join(CHECKS, "tf1_check.py"), "mirrored"])


@pytest.mark.skipif(not os.path.exists(MXNET_PYTHON), reason=f"no MXNet environment at {MXNET_PYTHON} "
                    "(scripts/setup.sh creates .venv-mxnet)")
def test_mxnet(tmp_path):
    out = run_check([os.path.join(CHECKS, "mxnet_check.py"), str(tmp_path / "masks.npz")], python=MXNET_PYTHON)
    assert_all_ok(out, MXNET_CHECKS)
    assert_masks_match(tmp_path / "masks.npz")
