"""The prunekit command line and the training recipe behind it."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from prunekit.cli import main  # noqa: E402

TINY = ["--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64", "--batch-size", "32",
        "--dense-epochs", "1", "--ramp-epochs", "1", "--finetune-epochs", "1", "--quiet", "--threads", "1"]


def test_plan_prints_targets_and_patterns(capsys):
    assert main(["plan", "--pattern", "bank16", "--target-sparsity", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "conv2.weight" in out and "0.7500" in out and "BankBalanced(bank_size=16)" in out
    assert "conv1.weight" in out and "name contains 'conv1.'" in out


@pytest.mark.parametrize("argv,message", [
    (["plan", "--target-sparsity", "1.5"], "target_sparsity must be in [0, 1); got 1.5"),
    (["plan", "--special-sparsity-dict", "conv2_weight=0.5"], "did you mean 'conv2.weight'"),
    (["plan", "--pattern", "2:4", "--target-sparsity", "0.9"], "NM(2, 4) always ends at sparsity 0.5"),
    (["plan", "--frequency", "0"], "frequency must be >= 1"),
    (["report", "/no/such/file.pt"], "checkpoint '/no/such/file.pt' does not exist"),
    (["train", "--optimizer", "lion"] + TINY, "unknown optimizer 'lion'"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunekit: error: ") and message in err


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="target_sparsity"):
        main(["--debug", "plan", "--target-sparsity", "2"])


def test_train_report_and_resume_is_identical(tmp_path, capsys):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(["train", *TINY, "--target-sparsity", "0.8", "--out", full]) == 0
    summary = json.loads(open(os.path.join(full, "summary.json")).read())
    assert summary["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert len(summary["history"]) == 3 and os.path.exists(os.path.join(full, "plot.png"))
    # stop after the first epoch, then resume with the same flags
    steps = 256 // 32
    assert main(["train", *TINY, "--target-sparsity", "0.8", "--out", part, "--max-steps", str(steps)]) == 0
    ckpt = torch.load(os.path.join(part, "checkpoint.pt"), weights_only=False)
    ckpt["recipe"]["max_steps"] = None  # the resumed run has no step limit
    del ckpt["recipe"]["compile_step"]  # as written before the recipe had the field: its default applies
    torch.save(ckpt, os.path.join(part, "checkpoint.pt"))
    assert main(["train", *TINY, "--target-sparsity", "0.8", "--out", part,
                 "--resume", os.path.join(part, "checkpoint.pt")]) == 0
    a = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(part, "checkpoint.pt"), weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["report", os.path.join(full, "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert "conv3.weight" in out and "pruning rate" in out and "with save_sparse" in out


def test_resume_with_other_flags_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", *TINY, "--out", out, "--max-steps", "2"]) == 0
    assert main(["train", *TINY, "--out", out, "--lr", "0.1", "--resume", os.path.join(out, "checkpoint.pt")]) == 2
    assert "different recipe" in capsys.readouterr().err


def test_demo_with_baseline_prints_summary(tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dense baseline" in out and "pruned" in out and "MACs: dense" in out
    assert os.path.exists(tmp_path / "plot.png") and os.path.exists(tmp_path / "summary.json")
    assert "compressed" in out and os.path.exists(tmp_path / "model.safetensors")


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "prunekit", "plan", "--target-sparsity", "0.5"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "linear1.weight" in out.stdout


def test_convert_and_ir_show(tmp_path, capsys):
    pytest.importorskip("onnx")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p[torch.rand_like(p) < 0.5] = 0
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    assert main(["convert", str(tmp_path / "r18.pt"), str(tmp_path / "r18.json"), "--arch", "resnet18",
                 "--num-classes", "10", "--input-shape", "1,3,32,32"]) == 0
    assert main(["convert", str(tmp_path / "r18.json"), str(tmp_path / "r18.onnx"),
                 "--weights", str(tmp_path / "r18.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "r18.onnx"), str(tmp_path / "back.json")]) == 0
    capsys.readouterr()
    assert main(["ir", "show", str(tmp_path / "back.json"), "--weights", str(tmp_path / "back.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "nn.conv2d" in out
    sparsity = float(out.rsplit("sparsity of weight matrices/kernels ", 1)[1].split()[0])
    assert sparsity == pytest.approx(0.5, abs=0.01), "the zeros survived torch -> IR -> ONNX -> IR"
    assert main(["convert", str(tmp_path / "r18.pt"), str(tmp_path / "x.json")]) == 2
    assert "--arch" in capsys.readouterr().err


def test_compile_step_flag_reaches_the_optimizer(tmp_path):
    from prunekit.cli import _recipe, build_parser
    from prunekit.torch import recipe as recipes
    from prunekit.torch.models import SeedCNN
    args = build_parser().parse_args(["train", *TINY, "--compile-step", "--out", str(tmp_path)])
    recipe = _recipe(args)
    opt = recipes._optimizer(recipe, SeedCNN(), sparse=True, steps_per_epoch=8)
    assert recipe.compile_step and opt._prunekit_compiled is not None and opt.pruning.compiled_event is not None
    plain = recipes._optimizer(_recipe(build_parser().parse_args(["train", *TINY])), SeedCNN(), True, 8)
    assert getattr(plain, "_prunekit_compiled", None) is None
