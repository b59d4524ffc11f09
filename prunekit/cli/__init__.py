"""The ``prunekit`` command line: parse arguments, then call the library.

    prunekit demo                     prune the seed CNN on Fashion-MNIST to 95%, with a dense baseline
    prunekit train [flags]            any recipe: dataset, model, optimizer, pattern, every pruning argument
    prunekit plan [flags]             which parameters get which target and pattern, before training
    prunekit report CHECKPOINT        per-layer sparsity, dense/effective MACs, sizes
    prunekit convert SRC DST          IR (.json) <-> ONNX (.onnx); torch checkpoint (.pt) -> IR/ONNX; -> Keras (.keras)
    prunekit ir show FILE             nodes, ops, parameters and sparsity of an IR graph or ONNX model
    prunekit zoo list|info|fetch|verify   the sparse model zoo (prunekit/cli/zoo.py)

User errors print one line and exit with status 2; ``--debug`` (anywhere on the line) shows the traceback.
Warnings become one-line ``prunekit: note:`` messages on stderr (raw with ``--debug``).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import warnings

from prunekit.cli import convert as convert_cli
from prunekit.cli import zoo as zoo_cli
from prunekit.errors import ConfigError, PrunekitError

__all__ = ["main", "build_parser"]


def _comma_list(text):
    return [t for t in text.split(",") if t]


def _special(text):
    result = {}
    for item in _comma_list(text):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected NAME=SPARSITY pairs separated by commas; got {item!r}")
        name, value = item.split("=", 1)
        try:
            result[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"sparsity for {name!r} must be a number; got {value!r}") from None
    return result


def _json_dict(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"4d\": [-1, 4, -1, 1]}}'; got {text!r}")
    return value


def _add_debug(p):
    # SUPPRESS: a subcommand's parser must not reset the --debug given before the subcommand
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _add_pruning_flags(p, target_default):
    g = p.add_argument_group("pruning arguments (each flag is the Python argument of the same name: "
                             "--target-sparsity is target_sparsity)")
    g.add_argument("--target-sparsity", type=float, default=None,
                   help=f"default {target_default} (an N:M pattern sets its own)")
    p.set_defaults(default_target=target_default)
    g.add_argument("--pretrain-step", type=int, default=None, help="default: dense epochs x steps per epoch")
    g.add_argument("--sparse-step", type=int, default=None, help="default: ramp epochs x steps per epoch")
    g.add_argument("--frequency", type=float, default=None, help="default: steps per epoch / 5")
    g.add_argument("--init-sparsity", type=float, default=0.0)
    g.add_argument("--keywords-no-sparse", type=_comma_list, default=None,
                   help="comma-separated substrings; default for seed-cnn: bias,beta,gamma,conv1.; for "
                        "small-resnet: bias,beta,gamma,stem.")
    g.add_argument("--special-sparsity-dict", type=_special, default=None, metavar="NAME=S,...")
    g.add_argument("--pattern", default=None,
                   help="unstructured (default), global, bank<B>, <N>:<M>, block<R>x<C>")
    g.add_argument("--sparse-block", type=_json_dict, default=None, metavar="JSON",
                   help="the original tool's sparse_block dict, e.g. '{\"4d\": [-1, 4, -1, 1]}' (instead of --pattern)")
    g.add_argument("--restore-sparsity", action="store_true")
    g.add_argument("--fix-sparsity", action="store_true")
    g.add_argument("--l1-regularization", action="store_true")
    g.add_argument("--l1-strength", type=float, default=None)
    g.add_argument("--exponent", type=float, default=3.0)
    g.add_argument("--method", default=None,
                   help="magnitude (default), feedback (dense weights in the optimizer, pruned entries regrow), "
                        "sr-ste (feedback + decay of the pruned entries)")
    g.add_argument("--sr-ste-decay", type=float, default=None, help="with --method sr-ste; default 2e-4")


def _add_training_flags(p, epochs=(3, 6, 3)):
    g = p.add_argument_group("training")
    p.set_defaults(epoch_defaults=epochs)
    g.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default), mnist, digits, synthetic")
    g.add_argument("--data-root", default=None, help="a directory with the IDX files (else the usual places)")
    g.add_argument("--download", action="store_true", help="allow a torchvision download")
    g.add_argument("--model", default="seed-cnn", help="seed-cnn (default), small-resnet, resnet18")
    g.add_argument("--optimizer", default="sgd", help="sgd (default), adam, adamw")
    g.add_argument("--lr", type=float, default=0.05, help="default %(default)s, cosine decay to 0")
    g.add_argument("--momentum", type=float, default=0.9, help="default %(default)s (sgd)")
    g.add_argument("--weight-decay", type=float, default=5e-5, help="default %(default)s")
    g.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    g.add_argument("--epochs", type=float, default=None, metavar="N",
                   help=f"N epochs: a quarter dense, half ramp, a quarter fine-tune (fractions allowed; "
                        f"the default {epochs[0]}/{epochs[1]}/{epochs[2]} below is --epochs {sum(epochs)})"
                        if epochs == (3, 6, 3) else
                        "N epochs: a quarter dense, half ramp, a quarter fine-tune (fractions allowed)")
    g.add_argument("--dense-epochs", type=float, default=None, help=f"default {epochs[0]}")
    g.add_argument("--ramp-epochs", type=float, default=None, help=f"default {epochs[1]}")
    g.add_argument("--finetune-epochs", type=float, default=None, help=f"default {epochs[2]}")
    g.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    g.add_argument("--test-subset", type=int, default=None)
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    g.add_argument("--seed", type=int, default=0, help="default %(default)s")
    g.add_argument("--compile-step", action="store_true",
                   help="compile the pruning optimizer's step and prune events (torch.compile; needs a C++ compiler)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g.add_argument("--quiet", action="store_true")


def build_parser():
    parser = argparse.ArgumentParser(prog="prunekit", description="Train sparse networks by swapping the optimizer.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune the seed CNN on Fashion-MNIST to 95%% beside a dense baseline")
    _add_training_flags(demo, epochs=(1, 3, 2))
    _add_pruning_flags(demo, 0.95)
    demo.add_argument("--out", default=None, help="output directory (default runs/demo, replaced on each demo)")
    demo.add_argument("--no-baseline", action="store_true", help="skip the dense baseline (half the time)")
    train = sub.add_parser("train", help="train with a pruning optimizer")
    _add_training_flags(train)
    _add_pruning_flags(train, 0.9)
    g = train.add_argument_group("runs")
    g.add_argument("--out", default=None,
                   help="output directory (default runs/train; when that holds an earlier run, the next free "
                        "runs/train-N; with --resume, the checkpoint's directory)")
    g.add_argument("--overwrite", action="store_true", help="replace the earlier run in --out")
    g.add_argument("--baseline", action="store_true", help="also train a dense baseline on the same batches")
    g.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run that wrote CHECKPOINT with its saved recipe; flags may change only "
                        f"{', '.join(RESUME_FLAGS)}")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from these weights (fine-tune a sparse model with --restore-sparsity)")
    plan = sub.add_parser("plan", help="print which parameters get which target and pattern")
    plan.add_argument("--model", default="seed-cnn")
    plan.add_argument("--classes", type=int, default=10)
    _add_pruning_flags(plan, 0.9)
    converters = convert_cli.add_parsers(sub)
    report = sub.add_parser("report", help="sparsity, MACs and sizes of a checkpoint")
    report.add_argument("checkpoint")
    report.add_argument("--json", action="store_true", help="print JSON")
    zoo_cli.add_parser(sub)
    for command in (demo, train, plan, *converters, report):
        _add_debug(command)
    return parser


def _prune_args(args, model):
    from prunekit.core import parse_pattern
    from prunekit.torch.models import SEED_CNN_DENSE, SMALL_RESNET_DENSE
    target = args.target_sparsity
    fixed = parse_pattern(args.pattern).fixed_sparsity if args.pattern else None
    if target is None and fixed is None:
        target = args.default_target
    prune = {"target_sparsity": target, "init_sparsity": args.init_sparsity,
             "restore_sparsity": args.restore_sparsity, "fix_sparsity": args.fix_sparsity,
             "L1_regularization": args.l1_regularization, "exponent": args.exponent}
    for name in ("pattern", "sparse_block", "pretrain_step", "sparse_step", "frequency", "l1_strength",
                 "special_sparsity_dict", "method", "sr_ste_decay"):
        value = getattr(args, name, None)
        if value is not None:
            prune[name] = value
    keywords = args.keywords_no_sparse
    if keywords is None and model in ("seed-cnn", "small-resnet"):
        keywords = list(SEED_CNN_DENSE if model == "seed-cnn" else SMALL_RESNET_DENSE)
    if keywords is not None:
        prune["keywords_no_sparse"] = keywords
    return prune


def _epochs(args):
    """(dense, ramp, fine-tune) epochs from --epochs or the three flags (not both)."""
    split = (args.dense_epochs, args.ramp_epochs, args.finetune_epochs)
    if args.epochs is not None:
        if any(e is not None for e in split):
            raise ConfigError("give either --epochs or --dense-epochs/--ramp-epochs/--finetune-epochs, not both")
        return args.epochs / 4, args.epochs / 2, args.epochs / 4
    return tuple(d if e is None else e for e, d in zip(split, args.epoch_defaults))


def _recipe(args):
    from prunekit.torch.recipe import Recipe
    dense, ramp, finetune = _epochs(args)
    return Recipe(dataset=args.dataset, data_root=args.data_root, download=args.download,
                  train_subset=args.train_subset, test_subset=args.test_subset, model=args.model,
                  optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                  batch_size=args.batch_size, dense_epochs=dense, ramp_epochs=ramp,
                  finetune_epochs=finetune, max_steps=args.max_steps, seed=args.seed,
                  compile_step=args.compile_step, prune=_prune_args(args, args.model))


# flags a resumed run may change (where data is read from, when to stop, how fast, where to write)
RESUME_FLAGS = ("--max-steps", "--threads", "--out", "--overwrite", "--quiet", "--data-root", "--download")
_PRUNE_KEYS = {"l1_regularization": "L1_regularization"}
_EPOCH_FIELDS = ("dense_epochs", "ramp_epochs", "finetune_epochs")


def _given(argv):
    """The destinations of the flags typed on the command line (a second parse that fills in no default).

    argparse has no public way to tell a default from a typed value, so the second parser's defaults
    (``_defaults`` and each action's) are replaced by SUPPRESS: only typed flags reach its namespace.
    """
    parser = build_parser()

    def strip(p):
        p._defaults.clear()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    strip(child)
            else:
                action.default = argparse.SUPPRESS
    strip(parser)
    return set(vars(parser.parse_args(argv)))


def _resume_recipe(args, given):
    """The checkpoint's recipe, with the flags that may change on resume applied; any other flag must
    repeat the saved value, else an error names the flag, the saved and the given value."""
    from prunekit.torch.recipe import load_checkpoint, recipe_from_checkpoint
    ckpt = load_checkpoint(args.resume)
    saved = recipe_from_checkpoint(ckpt, args.resume)
    fresh = _recipe(args)
    merged = dataclasses.replace(saved, prune=dict(saved.prune), data_root=fresh.data_root if "data_root" in given
                                 else saved.data_root, download=fresh.download or saved.download,
                                 max_steps=fresh.max_steps)
    fields = {f.name for f in dataclasses.fields(saved)}
    for dest in sorted(given):
        flag = "--" + dest.replace("_", "-")
        if flag in RESUME_FLAGS or dest in ("command", "debug", "resume"):
            continue
        if dest == "epochs" or dest in _EPOCH_FIELDS:
            pairs = [(f, getattr(saved, f), getattr(fresh, f)) for f in _EPOCH_FIELDS if dest in ("epochs", f)]
        elif dest in fields:
            pairs = [(dest, getattr(saved, dest), getattr(fresh, dest))]
        elif dest == "baseline":
            pairs = [("baseline", "dense" in ckpt.get("models", {}), True)]
        elif dest == "init_from":
            raise ConfigError("--init-from starts a new run and --resume continues one; give only one")
        else:
            key = _PRUNE_KEYS.get(dest, dest)
            pairs = [(key, saved.prune.get(key), fresh.prune.get(key))]
        for _, before, now in pairs:
            if before != now:
                raise ConfigError(f"{flag} differs from the run in {args.resume}: saved {_show(before)}, given "
                                  f"{_show(now)}; a resumed run keeps its recipe (only {', '.join(RESUME_FLAGS)} "
                                  "may change): drop the flag, or start a new run with --init-from")
    return merged


def _show(value):
    return "not set" if value is None else repr(value)


def _is_run(path):
    return any(os.path.exists(os.path.join(path, f)) for f in ("checkpoint.pt", "summary.json"))


def _train_out(args):
    """Where ``train`` writes: never over an earlier run unless --overwrite (see --out's help)."""
    if args.out is None and args.resume:
        return os.path.dirname(args.resume) or "."
    if args.out is not None:
        resuming_here = args.resume and os.path.abspath(args.out) == os.path.dirname(os.path.abspath(args.resume))
        if _is_run(args.out) and not (args.overwrite or resuming_here):
            raise ConfigError(f"{args.out!r} holds an earlier run; pass --overwrite to replace it, "
                              f"--resume {os.path.join(args.out, 'checkpoint.pt')} to continue it, or another --out")
        return args.out
    out, n = "runs/train", 1
    while _is_run(out) and not args.overwrite:
        n += 1
        out = f"runs/train-{n}"
    if n > 1:
        print(f"prunekit: runs/train holds an earlier run; writing {out} (--overwrite replaces runs/train)")
    return out


def _run_training(args, baseline, resume=None, init_from=None, given=()):
    import torch
    from prunekit.data import DatasetNotFound
    from prunekit.torch import recipe as recipes
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _resume_recipe(args, given) if resume else _recipe(args)
    out = args.out_dir = _train_out(args) if args.command == "train" else (args.out or "runs/demo")
    try:
        summary = recipes.run(recipe, out, baseline=baseline, resume=resume, init_from=init_from, quiet=args.quiet)
    except DatasetNotFound as e:
        if args.command != "demo" or recipe.dataset != "fashion-mnist":
            raise
        print(f"prunekit: {e}\nprunekit: falling back to scikit-learn's bundled digits (8x8 images, 1797 examples)")
        recipe.dataset = "digits"
        summary = recipes.run(recipe, out, baseline=baseline, quiet=args.quiet)
    plot_path = os.path.join(out, "plot.png")
    if not recipes.plot(summary, plot_path):
        plot_path = None
    _print_summary(summary, out, plot_path)
    return summary


def _print_summary(s, out, plot_path):
    print("\nsummary")
    if "dense_final_test_acc" in s:
        print(f"  dense baseline  test accuracy {s['dense_final_test_acc']:.4f} (best {s['dense_best_test_acc']:.4f})")
    print(f"  pruned          test accuracy {s['final_test_acc']:.4f} (best {s['best_test_acc']:.4f}) "
          f"at sparsity {s['sparsity']:.4f}")
    print("  per-layer sparsity:")
    for name, value in s["per_tensor_sparsity"].items():
        print(f"    {name:<24} {value:.4f}")
    print(f"  MACs: dense {s['dense_macs']:,}, effective {s['effective_macs']:,.0f} "
          f"(pruning rate {s['pruning_rate']:.4f}, the seed's 1 - effective/dense)")
    print(f"  model size: {s['model_state_bytes'] / 1e6:.3f} MB as a torch state_dict, "
          f"{s['sparse_bytes'] / 1e6:.3f} MB compressed ({s['sparse_bytes'] / s['model_state_bytes']:.1%}, "
          f"prunekit.torch.save_sparse)")
    written = [os.path.join(out, f) for f in ("checkpoint.pt", "model.safetensors", "summary.json")]
    print(f"  wrote {', '.join(p for p in written + [plot_path] if p and os.path.exists(p))}")


def _plan(args):
    from prunekit.core import PruneConfig, resolve_plan
    from prunekit.torch.models import build_model
    model = build_model(args.model, args.classes)
    prune = _prune_args(args, args.model)
    for name in ("pretrain_step", "sparse_step"):
        prune.setdefault(name, 0)
    config = PruneConfig.from_kwargs(**prune)
    print(resolve_plan([(n, tuple(p.shape)) for n, p in model.named_parameters()], config))


def _report(args):
    from prunekit.torch.recipe import load_checkpoint
    from prunekit.torch.report import checkpoint_report
    report = checkpoint_report(load_checkpoint(args.checkpoint), args.checkpoint)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"checkpoint {args.checkpoint}: {report['file_bytes'] / 1e6:.2f} MB on disk (model and optimizer state)")
    print(f"model weights: {report['model_state_bytes'] / 1e6:.3f} MB as a torch state_dict, "
          f"{report['compressed_bytes'] / 1e6:.3f} MB with save_sparse "
          f"({report['compressed_bytes'] / report['model_state_bytes']:.1%})")
    if report.get("recipe"):
        r = report["recipe"]
        print(f"recipe: {r['model']} on {r['dataset']}, {r['optimizer']}, epoch {report.get('epoch')}")
    print(f"{'parameter':<28} {'shape':<16} {'sparsity':>9}")
    for row in report["tensors"]:
        print(f"{row['name']:<28} {'x'.join(map(str, row['shape'])):<16} {row['sparsity']:>9.4f}")
    print(f"total sparsity of matrices/kernels: {report['sparsity']:.4f}")
    if report.get("macs"):
        m = report["macs"]
        print(f"MACs: dense {m['dense']:,}, effective {m['effective']:,.0f}, pruning rate {m['pruning_rate']:.4f}")


def _note(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the CLI: one line, no source path."""
    text = str(message)
    text = text[len("prunekit: "):] if text.startswith("prunekit: ") else f"{category.__name__}: {text}"
    print(f"prunekit: note: {text}", file=sys.stderr)


@contextlib.contextmanager
def _notes(args):
    """Warnings as one-line notes (raw with --debug); a plan's "stays dense" is already in the printed table."""
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _note
            if args.command in ("plan", "train", "demo"):
                warnings.filterwarnings("ignore", message=r"prunekit: '.*' stays dense: ")
        yield


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    try:
        with _notes(args):
            if args.command == "demo":
                _run_training(args, baseline=not args.no_baseline)
            elif args.command == "train":
                _run_training(args, baseline=args.baseline, resume=args.resume, init_from=args.init_from,
                              given=_given(argv))
            elif args.command == "plan":
                _plan(args)
            elif args.command == "report":
                _report(args)
            elif args.command == "convert":
                convert_cli.convert(args)
            elif args.command == "ir":
                convert_cli.ir_show(args)
            elif args.command == "zoo":
                return zoo_cli.run(args)
        return 0
    except (PrunekitError, ValueError, TypeError, OSError, KeyError) as e:
        if args.debug:
            raise
        print(f"prunekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out_dir", None)
        where = os.path.join(out, "checkpoint.pt") if out else "CHECKPOINT"
        print(f"prunekit: interrupted; the last epoch's checkpoint is complete: prunekit train --resume {where}",
              file=sys.stderr)
        return 130
