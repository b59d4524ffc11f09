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
    (["plan", "--method", "rigl"], "method must be one of ['magnitude', 'feedback', 'sr-ste']; got 'rigl'"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunekit: error: ") and message in err


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="target_sparsity"):
        main(["--debug", "plan", "--target-sparsity", "2"])


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SMALL = ["--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64", "--batch-size", "32",
         "--epochs", "3", "--quiet", "--threads", "1"]


def cli(*argv, cwd):
    """``prunekit ARGV`` as a user runs it: the console entry point in a fresh process."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "prunekit", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_resume_with_the_checkpoint_alone_continues_bit_identically(tmp_path):
    """--resume CKPT needs no other flag; a run stopped mid-epoch by --max-steps ends as an uninterrupted one."""
    full = cli("train", *SMALL, "--target-sparsity", "0.8", "--out", "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    summary = strict_json(tmp_path / "full" / "summary.json")
    assert summary["sparsity"] == pytest.approx(0.8, abs=0.01) and len(summary["history"]) == 3
    part = cli("train", *SMALL, "--target-sparsity", "0.8", "--out", "part", "--max-steps", "10", cwd=tmp_path)
    assert part.returncode == 0, part.stderr
    ckpt = str(tmp_path / "part" / "checkpoint.pt")
    # at --max-steps already: nothing to train, no nan row, a valid summary
    again = cli("train", "--resume", ckpt, "--max-steps", "10", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to train" in again.stdout and "nan" not in again.stdout.lower()
    assert strict_json(tmp_path / "part" / "summary.json")["history"][-1]["step"] == 10
    done = cli("train", "--resume", ckpt, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "at step 10 of 24" in done.stdout
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3] and b["step"] == 24
    report = cli("report", str(tmp_path / "full" / "checkpoint.pt"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "conv3.weight" in report.stdout and "pruning rate" in report.stdout and "with save_sparse" in report.stdout


def test_resume_names_the_flag_that_differs(tmp_path):
    first = cli("train", *SMALL, "--out", "r", "--max-steps", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = os.path.join("r", "checkpoint.pt")
    out = cli("train", *SMALL, "--lr", "0.1", "--resume", ckpt, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--lr differs from the run in" in out.stderr and "saved 0.05, given 0.1" in out.stderr
    out = cli("train", "--resume", ckpt, "--pattern", "2:4", cwd=tmp_path)
    assert out.returncode == 2 and "--pattern differs" in out.stderr and "saved not set, given '2:4'" in out.stderr
    # the same values again, and the flags that may change, are accepted
    out = cli("train", *SMALL, "--lr", "0.05", "--resume", ckpt, "--max-steps", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "resumed from" in out.stdout and "at step 2 of 24" in out.stdout


def test_crafted_pickles_are_never_unpickled(tmp_path):
    """report, --resume and --init-from read checkpoints with weights_only=True: no code runs."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"w": torch.zeros(2, 2)}, "recipe": Payload()}, tmp_path / "evil.pt")
    for argv in (["report", "evil.pt"], ["train", "--resume", "evil.pt"],
                 ["train", *SMALL, "--init-from", "evil.pt", "--out", "x"]):
        out = cli(*argv, cwd=tmp_path)
        assert out.returncode == 2 and "does not run code from a file" in out.stderr, (argv, out.stderr)
        assert not marker.exists(), argv
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the control: unpickling it does run code
    assert marker.exists()


def test_train_never_overwrites_an_earlier_run(tmp_path):
    first = cli("train", *SMALL, "--max-steps", "1", cwd=tmp_path)
    assert first.returncode == 0 and (tmp_path / "runs" / "train" / "checkpoint.pt").exists()
    second = cli("train", *SMALL, "--max-steps", "1", cwd=tmp_path)
    assert second.returncode == 0 and "writing runs/train-2" in second.stdout
    assert (tmp_path / "runs" / "train-2" / "checkpoint.pt").exists()
    refused = cli("train", *SMALL, "--max-steps", "1", "--out", "runs/train", cwd=tmp_path)
    assert refused.returncode == 2 and "holds an earlier run; pass --overwrite" in refused.stderr
    # --init-from says what it loaded; --overwrite replaces
    init = cli("train", *SMALL, "--max-steps", "1", "--out", "runs/train", "--overwrite", "--init-from",
               "runs/train-2/checkpoint.pt", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "initialised the model from runs/train-2/checkpoint.pt: 23 tensors" in init.stdout
    wrong = cli("train", *SMALL, "--model", "resnet18", "--out", "r18", "--init-from", "runs/train/checkpoint.pt",
                cwd=tmp_path)
    assert wrong.returncode == 2 and "do not fit this model" in wrong.stderr


def test_cli_help_and_flags_as_documented(tmp_path):
    top = cli("--help", cwd=tmp_path).stdout
    top = " ".join(top.split())
    assert "Keras (.keras) and torch checkpoints (.pt, source only)" in top  # .pt is a source, not a target
    train = cli("train", "--help", cwd=tmp_path).stdout
    assert "SPEC.md" not in train and "--epochs N" in train and "default 3/6/3" in " ".join(train.split())
    assert "--sparse-block" in train and "--overwrite" in train
    out = cli("plan", "--target-sparsity", "2", "--debug", cwd=tmp_path)  # --debug after the subcommand
    assert out.returncode == 1 and "Traceback" in out.stderr
    out = cli("plan", "--sparse-block", '{"4d": [-1, 4, -1, 1]}', cwd=tmp_path)
    assert out.returncode == 0 and "Block(1, 4)" in out.stdout, out.stderr
    out = cli("plan", "--model", "resnet18", "--pattern", "2:4", cwd=tmp_path)
    assert out.returncode == 0 and "pattern does not fit" in out.stdout
    assert out.stderr == "", "the table already says it; no raw warning"
    out = cli("train", *SMALL, "--dense-epochs", "1", cwd=tmp_path)
    assert out.returncode == 2 and "either --epochs or --dense-epochs" in out.stderr


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


def test_report_of_weights_that_do_not_fit_the_recipe_is_a_clear_error():
    from prunekit.errors import ConfigError
    from prunekit.torch.report import checkpoint_report
    ckpt = {"model": torch.nn.Linear(3, 2).state_dict(), "recipe": {"model": "seed-cnn", "dataset": "synthetic"}}
    with pytest.raises(ConfigError, match="do not fit its recipe's model 'seed-cnn'"):
        checkpoint_report(ckpt)


def test_method_and_erk_flags_reach_the_optimizer(tmp_path, capsys):
    from prunekit.cli import _recipe, build_parser
    from prunekit.torch import recipe as recipes
    from prunekit.torch.models import SeedCNN
    args = build_parser().parse_args(["train", *TINY, "--method", "sr-ste", "--sr-ste-decay", "1e-3",
                                      "--out", str(tmp_path)])
    opt = recipes._optimizer(_recipe(args), SeedCNN(), sparse=True, steps_per_epoch=8)
    assert opt.pruning.config.method == "sr-ste" and opt.pruning.config.sr_ste_decay == 1e-3
    assert main(["plan", "--pattern", "erk", "--target-sparsity", "0.98"]) == 0
    out = capsys.readouterr().out
    assert "ERK()" in out and "linear1.weight  10x1024      0.5282" in out
