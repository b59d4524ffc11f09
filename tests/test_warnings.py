"""Ordinary use shows no warning that is not about the user's own input (issue 17, items 7 and 10).

Some of torch's warnings are issued once per process, so the checks that need a fresh process run in one.
"""

import logging
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

FRESH = """
import warnings
warnings.simplefilter("always")
import torch
import prunekit.torch as pruning
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
with torch.no_grad():
    for p in model.parameters():
        if p.dim() == 2:
            p[torch.rand_like(p) < 0.9] = 0
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pruning.sparsify_for_inference(model, torch.randn(8, 64), kernels=("torch-csr",), min_speedup=0.0)
    if {need_onnx}:
        from prunekit import ir
        ir.to_onnx(ir.from_torch(model.eval(), torch.randn(1, 64)), "m.onnx")
        back = ir.to_torch(ir.from_onnx("m.onnx"))
for w in caught:
    print("WARNING", w.category.__name__, w.message)
print("done")
"""


def test_sparsify_for_inference_and_ir_from_onnx_do_not_warn(tmp_path):
    import importlib.util
    need_onnx = importlib.util.find_spec("onnx") is not None
    out = subprocess.run([sys.executable, "-c", FRESH.format(need_onnx=need_onnx)], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done" in out.stdout and "WARNING" not in out.stdout, out.stdout


def test_compiling_is_announced_once(caplog):
    from prunekit.torch import compiled
    compiled._announced.discard("a test function")
    add_one = compiled._Compiled(lambda x: x + 1, "a test function", backend="eager")
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        assert int(add_one(torch.tensor(1))) == 2 and int(add_one(torch.tensor(2.0))) == 3
    notes = [r.getMessage() for r in caplog.records if "a test function" in r.getMessage()]
    assert notes == ["prunekit: compiling a test function with torch.compile (a pause once per process; "
                     "inductor caches the kernels for next time)"]


def test_no_cuda_runtime_notice_is_dropped_on_the_compile_path(caplog):
    import prunekit.torch.compiled  # noqa: F401  (installs the filter)
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["something else"]
