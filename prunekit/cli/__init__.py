"""The ``prunekit`` command line: parse arguments, then call the library.

    prunekit demo                     prune the seed CNN on Fashion-MNIST to 95%, with a dense baseline
    prunekit train [flags]            any recipe: dataset, model, optimizer, pattern, every pruning argument
    prunekit plan [flags]             which parameters get which target and pattern, before training
    prunekit report CHECKPOINT        per-layer sparsity, dense/effective MACs, sizes
    prunekit convert SRC DST          IR (.json) <-> ONNX (.onnx); torch (.pt + --arch) -> IR/ONNX; -> Keras (.keras)
    prunekit ir show FILE             nodes, ops, parameters and sparsity of an IR graph
    prunekit zoo list|info|fetch|verify   the sparse model zoo (prunekit/cli/zoo.py)

User errors print one line and exit with status 2; ``--debug`` shows the traceback.
"""

import argparse
import json
import os
import sys

from prunekit.cli import zoo as zoo_cli
from prunekit.errors import PrunekitError

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


def _add_pruning_flags(p, target_default):
    g = p.add_argument_group("pruning (SPEC.md; each flag is named after the argument)")
    g.add_argument("--target-sparsity", type=float, default=None,
                   help=f"default {target_default} (an N:M pattern sets its own)")
    p.set_defaults(default_target=target_default)
    g.add_argument("--pretrain-step", type=int, default=None, help="default: dense epochs x steps per epoch")
    g.add_argument("--sparse-step", type=int, default=None, help="default: ramp epochs x steps per epoch")
    g.add_argument("--frequency", type=float, default=None, help="default: steps per epoch / 5")
    g.add_argument("--init-sparsity", type=float, default=0.0)
    g.add_argument("--keywords-no-sparse", type=_comma_list, default=None,
                   help="comma-separated substrings; default for seed-cnn: bias,beta,gamma,conv1.")
    g.add_argument("--special-sparsity-dict", type=_special, default=None, metavar="NAME=S,...")
    g.add_argument("--pattern", default="unstructured", help="unstructured, global, bank<B>, <N>:<M>, block<R>x<C>")
    g.add_argument("--restore-sparsity", action="store_true")
    g.add_argument("--fix-sparsity", action="store_true")
    g.add_argument("--l1-regularization", action="store_true")
    g.add_argument("--l1-strength", type=float, default=None)
    g.add_argument("--exponent", type=float, default=3.0)


def _add_training_flags(p, epochs=(3, 6, 3)):
    g = p.add_argument_group("training")
    g.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, digits, synthetic")
    g.add_argument("--data-root", default=None, help="a directory with the IDX files (else the usual places)")
    g.add_argument("--download", action="store_true", help="allow a torchvision download")
    g.add_argument("--model", default="seed-cnn", help="seed-cnn, resnet18")
    g.add_argument("--optimizer", default="sgd", help="sgd, adam, adamw")
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-5)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--dense-epochs", type=int, default=epochs[0])
    g.add_argument("--ramp-epochs", type=int, default=epochs[1])
    g.add_argument("--finetune-epochs", type=int, default=epochs[2])
    g.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    g.add_argument("--test-subset", type=int, default=None)
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile-step", action="store_true",
                   help="compile the pruning optimizer's step and prune events (torch.compile; needs a C++ compiler)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g.add_argument("--out", default=None, help="output directory")
    g.add_argument("--quiet", action="store_true")


def build_parser():
    parser = argparse.ArgumentParser(prog="prunekit", description="Train sparse networks by swapping the optimizer.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune the seed CNN on Fashion-MNIST to 95%% beside a dense baseline")
    _add_training_flags(demo, epochs=(1, 3, 2))
    _add_pruning_flags(demo, 0.95)
    demo.add_argument("--no-baseline", action="store_true", help="skip the dense baseline (half the time)")
    train = sub.add_parser("train", help="train with a pruning optimizer")
    _add_training_flags(train)
    _add_pruning_flags(train, 0.9)
    train.add_argument("--baseline", action="store_true", help="also train a dense baseline on the same batches")
    train.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue an interrupted run")
    train.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                       help="start from these weights (fine-tune a sparse model with --restore-sparsity)")
    plan = sub.add_parser("plan", help="print which parameters get which target and pattern")
    plan.add_argument("--model", default="seed-cnn")
    plan.add_argument("--classes", type=int, default=10)
    _add_pruning_flags(plan, 0.9)
    convert = sub.add_parser("convert", help="convert models between the IR (.json), ONNX (.onnx) and torch (.pt)")
    convert.add_argument("src", help=".json (IR), .onnx, or .pt (a torch state_dict of --arch)")
    convert.add_argument("dst", help=".json (IR; weights written beside it), .onnx, .keras (Keras 3)")
    convert.add_argument("--weights", default=None, help="weights of an IR source (.npz or .safetensors)")
    convert.add_argument("--out-weights", default=None, help="weights file of an IR destination "
                         "(default: DST with .safetensors)")
    convert.add_argument("--arch", default=None, help="torchvision architecture of a .pt source (e.g. resnet50)")
    convert.add_argument("--num-classes", type=int, default=1000)
    convert.add_argument("--input-shape", default="1,3,224,224", help="example input of a .pt source")
    convert.add_argument("--trust-pickle", action="store_true", help="allow pickled .npz weights (original tool)")
    ir_cmd = sub.add_parser("ir", help="inspect IR files")
    ir_sub = ir_cmd.add_subparsers(dest="ir_command", required=True)
    show = ir_sub.add_parser("show", help="nodes, ops, parameters and sparsity of an IR graph")
    show.add_argument("file")
    show.add_argument("--weights", default=None)
    show.add_argument("--trust-pickle", action="store_true")
    report = sub.add_parser("report", help="sparsity, MACs and sizes of a checkpoint")
    report.add_argument("checkpoint")
    report.add_argument("--json", action="store_true", help="print JSON")
    zoo_cli.add_parser(sub)
    return parser


def _prune_args(args, model):
    from prunekit.torch.models import SEED_CNN_DENSE
    from prunekit.core import parse_pattern
    target = args.target_sparsity
    if target is None and parse_pattern(args.pattern).fixed_sparsity is None:
        target = args.default_target
    prune = {"target_sparsity": target, "init_sparsity": args.init_sparsity, "pattern": args.pattern,
             "restore_sparsity": args.restore_sparsity, "fix_sparsity": args.fix_sparsity,
             "L1_regularization": args.l1_regularization, "exponent": args.exponent}
    for name in ("pretrain_step", "sparse_step", "frequency", "l1_strength", "special_sparsity_dict"):
        value = getattr(args, name, None)
        if value is not None:
            prune[name] = value
    keywords = args.keywords_no_sparse
    if keywords is None and model == "seed-cnn":
        keywords = list(SEED_CNN_DENSE)
    if keywords is not None:
        prune["keywords_no_sparse"] = keywords
    return prune


def _recipe(args):
    from prunekit.torch.recipe import Recipe
    return Recipe(dataset=args.dataset, data_root=args.data_root, download=args.download,
                  train_subset=args.train_subset, test_subset=args.test_subset, model=args.model,
                  optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                  batch_size=args.batch_size, dense_epochs=args.dense_epochs, ramp_epochs=args.ramp_epochs,
                  finetune_epochs=args.finetune_epochs, max_steps=args.max_steps, seed=args.seed,
                  compile_step=args.compile_step, prune=_prune_args(args, args.model))


def _run_training(args, baseline, resume=None, init_from=None, default_out="runs/train"):
    import torch
    from prunekit.data import DatasetNotFound
    from prunekit.torch import recipe as recipes
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(args)
    out = args.out or default_out
    try:
        summary = recipes.run(recipe, out, baseline=baseline, resume=resume, init_from=init_from, quiet=args.quiet)
    except DatasetNotFound as e:
        if args.command != "demo" or recipe.dataset != "fashion-mnist":
            raise
        print(f"prunekit: {e}\nprunekit: falling back to scikit-learn's bundled digits (8x8 images, 1797 examples)")
        recipe.dataset = "digits"
        summary = recipes.run(recipe, out, baseline=baseline, quiet=args.quiet)
    plot_path = os.path.join(out, "plot.png")
    recipes.plot(summary, plot_path)
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
    print(f"  wrote {os.path.join(out, 'checkpoint.pt')}, {os.path.join(out, 'model.safetensors')}, "
          f"{os.path.join(out, 'summary.json')}, {plot_path}")


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


def _load_any(args):
    """An IR graph from a .json, .onnx or torch .pt source."""
    import warnings
    from prunekit import ir
    src = args.src
    if src.endswith(".json"):
        with warnings.catch_warnings():
            if args.weights is None:
                warnings.simplefilter("always")
            return ir.load(src, weights=args.weights, trust_pickle=args.trust_pickle)
    if src.endswith(".onnx"):
        return ir.from_onnx(src)
    if src.endswith((".pt", ".pth")):
        import torch
        import torchvision
        if not args.arch or not hasattr(torchvision.models, args.arch):
            raise ValueError(f"a .pt source needs --arch naming a torchvision model (e.g. resnet50); got {args.arch!r}")
        model = getattr(torchvision.models, args.arch)(num_classes=args.num_classes)
        state = torch.load(src, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        shape = tuple(int(d) for d in args.input_shape.split(","))
        return ir.from_torch(model.eval(), torch.zeros(shape))
    raise ValueError(f"cannot read {src!r}: the source must end with .json, .onnx, .pt or .pth")


def _convert(args):
    import os
    from prunekit import ir
    graph = _load_any(args)
    if args.dst.endswith(".onnx"):
        ir.to_onnx(graph, args.dst)
        print(f"wrote {args.dst}")
    elif args.dst.endswith(".json"):
        weights = args.out_weights or os.path.splitext(args.dst)[0] + ".safetensors"
        ir.save(graph, args.dst, weights)
        print(f"wrote {args.dst} and {weights}")
    elif args.dst.endswith(".keras"):
        ir.to_keras(graph).save(args.dst)
        print(f"wrote {args.dst}")
    else:
        raise ValueError(f"cannot write {args.dst!r}: the destination must end with .json, .onnx or .keras")


def _ir_show(args):
    import collections
    import warnings

    import numpy as np
    from prunekit import ir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ir.load(args.file, weights=args.weights, trust_pickle=args.trust_pickle)
    ops = collections.Counter(n.op for n in graph.nodes.values())
    params = sum(int(np.prod(w.shape)) for w in graph.weights.values())
    matrices = [w for w in graph.weights.values() if w.ndim >= 2]
    zeros = sum(int((w == 0).sum()) for w in matrices)
    total = sum(w.size for w in matrices)
    print(f"{args.file}: {len(graph.nodes)} nodes, inputs {dict(graph.inputs)}, outputs {graph.outputs}")
    for op, count in ops.most_common():
        print(f"  {op:<22} {count}")
    source = "from the attrs (no weights file)" if args.weights is None else args.weights
    print(f"{len(graph.weights)} weights, {params:,} parameters ({source}); "
          f"sparsity of weight matrices/kernels {zeros / max(1, total):.4f}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            _run_training(args, baseline=not args.no_baseline, default_out="runs/demo")
        elif args.command == "train":
            _run_training(args, baseline=args.baseline, resume=args.resume, init_from=args.init_from)
        elif args.command == "plan":
            _plan(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "convert":
            _convert(args)
        elif args.command == "ir":
            _ir_show(args)
        elif args.command == "zoo":
            return zoo_cli.run(args)
        return 0
    except (PrunekitError, ValueError, TypeError, OSError, KeyError) as e:
        if args.debug:
            raise
        print(f"prunekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted; the last epoch's checkpoint is complete and resumable with --resume",
              file=sys.stderr)
        return 130
