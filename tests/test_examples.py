"""Every MNIST example runs with its smallest settings exactly as its docstring says, in its framework's
environment, so that the examples cannot rot: the test reads the commands from the docstrings."""

import ast
import importlib.util
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
EXAMPLES = os.path.join(ROOT, "examples", "mnist")
MXNET_PYTHON = os.environ.get("PRUNEKIT_MXNET_PYTHON", os.path.join(ROOT, ".venv-mxnet", "bin", "python"))
KEPT = "every zero of the loaded model is still zero: True"


def documented_runs(script):
    """The docstring's smallest-run commands of ``script``: (environment, python, argv)."""
    with open(os.path.join(EXAMPLES, script)) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    runs = []
    for line in doc.splitlines():
        if line.startswith("    ") and f"examples/mnist/{script}" in line and "--dataset synthetic" in line:
            words = shlex.split(line)
            env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
            words = [w for w in words if not ("=" in w and not w.startswith("-"))]
            runs.append((env, words[0], words[1:]))
    assert runs, f"{script}'s docstring shows no smallest run (--dataset synthetic)"
    return runs


def run_documented(script, cwd, python=sys.executable):
    """Run each documented smallest run of ``script`` in ``cwd`` (its files stay there for the next script)."""
    outputs = []
    for env, documented_python, argv in documented_runs(script):
        assert documented_python == ("python" if python == sys.executable else ".venv-mxnet/bin/python")
        assert argv[0] == f"examples/mnist/{script}"
        full_env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", **env)
        out = subprocess.run([python, os.path.join(ROOT, argv[0]), *argv[1:]], capture_output=True, text=True,
                             cwd=cwd, env=full_env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout)
    return outputs


def test_schedule_trains_before_it_prunes():
    """--epochs 1 must not prune the untrained network one-shot at step 0 (the seed's epochs // 4 did)."""
    sys.path.insert(0, EXAMPLES)
    try:
        from np_common import schedule
    finally:
        sys.path.remove(EXAMPLES)

    class Args:
        epochs = 1
    assert schedule(Args, 3) == {"pretrain_step": 1, "sparse_step": 1, "frequency": 1}
    Args.epochs = 12
    assert schedule(Args, 100) == {"pretrain_step": 300, "sparse_step": 600, "frequency": 20}
    assert schedule(Args, 100, pretrain=False)["pretrain_step"] == 0


def test_pytorch_examples(tmp_path):
    pytest.importorskip("torch")
    (first,) = run_documented("pytorch_pruning_simple.py", tmp_path)
    assert "sparsity 0.9500" in first and "pruning rate" in first and (tmp_path / "pruned.pt").exists()
    further, fixed = run_documented("pytorch_pruning_simple_resume.py", tmp_path)
    assert KEPT in further and "sparsity 0.9800" in further
    assert KEPT in fixed and "sparsity 0.9500" in fixed


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_keras_examples(tmp_path):
    (first,) = run_documented("keras_pruning_simple.py", tmp_path)
    assert "sparsity 0.9500" in first and (tmp_path / "pruned.keras").exists()
    further, fixed = run_documented("keras_pruning_simple_resume.py", tmp_path)
    assert KEPT in further and "sparsity 0.9800" in further
    assert KEPT in fixed and "sparsity 0.9500" in fixed


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_tensorflow1_examples(tmp_path):
    (first,) = run_documented("tensorflow1_pruning_simple.py", tmp_path)
    assert "sparsity 0.9500" in first
    further, fixed = run_documented("tensorflow1_pruning_simple_resume.py", tmp_path)
    assert KEPT in further and "sparsity 0.9800" in further
    assert KEPT in fixed and "sparsity 0.9500" in fixed


@pytest.mark.skipif(not os.path.exists(MXNET_PYTHON), reason="no .venv-mxnet (bash scripts/setup.sh creates it)")
def test_mxnet_examples(tmp_path):
    # set up as the docstring says: prunekit and scikit-learn installed in .venv-mxnet, no PYTHONPATH needed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([MXNET_PYTHON, "-c", "import prunekit.mxnet, sklearn"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert found.returncode == 0, f"setup.sh installs prunekit and scikit-learn there: {found.stderr[-500:]}"
    (first,) = run_documented("mxnet_pruning_simple.py", tmp_path, python=MXNET_PYTHON)
    assert "sparsity 0.9500" in first
    further, fixed = run_documented("mxnet_pruning_simple_resume.py", tmp_path, python=MXNET_PYTHON)
    assert KEPT in further and "sparsity 0.9800" in further
    assert KEPT in fixed and "sparsity 0.9500" in fixed


KERAS_PLAN = """
import keras, prunekit.keras as pruning
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="fc")])
opt = pruning.SGDSparse(learning_rate=0.1, target_sparsity=0.5)
try:
    opt.plan
except ValueError as e:
    print("before:", e)
opt.build(model.trainable_variables)
print("after:", opt.plan.names)
"""


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_keras_plan_before_the_first_fit_says_when_it_is_known(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", KERAS_PLAN], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before: SGDSparse.plan is known once the optimizer is built" in out.stdout
    assert "optimizer.build(model.trainable_variables)" in out.stdout and "after: " in out.stdout


def test_readme_torch_snippets_run_and_keep_their_files_apart(tmp_path):
    """The README's PyTorch blocks run as written; save_sparse and ir.save write different files."""
    pytest.importorskip("torch")
    import re
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    # the zoo's block needs the zoo's files and data: tests/test_zoo.py runs it
    torch_blocks = [b for b in blocks if ("prunekit.torch" in b or "prunekit.ir" in b) and "zoo.load" not in b]
    assert len(torch_blocks) == 2 and "ir.save(" in torch_blocks[1]
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", "\n".join(torch_blocks)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors", "sparse.safetensors"]


NOT_YET = set()  # files allowed to name ../shared (none)


def test_docs_point_only_at_files_a_user_has():
    """No ../shared paths (outside the repository) in the README, docs, docstrings or examples."""
    found = []
    for top in ("README.md", "docs", "prunekit", "examples", "scripts"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)) if top != "README.md" else [(ROOT, [], [top])]:
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith((".py", ".md", ".sh")) and os.path.relpath(path, ROOT) not in NOT_YET:
                    with open(path) as f:
                        if "../shared" in f.read():
                            found.append(os.path.relpath(path, ROOT))
    assert not found, f"these point outside the repository: {found}"
