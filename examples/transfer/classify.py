"""Sparse transfer learning: take a (sparse) backbone, put a new head on it for your classes, fine-tune
with its zeros kept (``restore_sparsity=True, fix_sparsity=True``), as the seed's section 3.1 did.

    # a zoo backbone (pruned to 95% on Fashion-MNIST classes 0-4), fine-tuned on classes 5-9
    python examples/transfer/classify.py --backbone seed-cnn-fashion-mnist-0to4-95 --dataset fashion-mnist:5-9
    # ... on scikit-learn's 8x8 digits, upsampled to the backbone's 28 x 28
    python examples/transfer/classify.py --backbone seed-cnn-fashion-mnist-0to4-95 --dataset digits
    # an IR graph with its weights, or a `prunekit train` checkpoint; CIFAR-10 (torchvision downloads it)
    python examples/transfer/classify.py --backbone model.json --weights model.safetensors --dataset cifar10
    python examples/transfer/classify.py --backbone runs/train/checkpoint.pt --dataset digits
    # the same network trained from scratch (random initial weights), for comparison
    python examples/transfer/classify.py --backbone seed-cnn-fashion-mnist-0to4-95 --from-scratch --dataset digits

The backbone is everything up to the input of its last linear layer; the new head is a linear layer for
the new classes (dense). Images are resized (bilinear) to ``--input-size`` and their channels matched,
with the backbone's own normalisation when it comes from the zoo. Prints progress and writes a JSON
summary (``--json``) with the test accuracy per epoch and the backbone's zeros before and after.
"""

import argparse
import collections
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

import prunekit.torch as pruning
from prunekit import ir, zoo
from prunekit.data import load as load_data
from prunekit.errors import ConfigError
from prunekit.torch.models import build_model
from prunekit.torch.recipe import load_checkpoint


def _ir_backbone(graph):
    """The graph cut before its last dense layer: ``(module, feature size)``."""
    node, features = zoo.feature_node(graph)
    return ir.to_torch(graph, outputs=node), features


def _replace_last_linear(model, classes):
    name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(linear.in_features, classes))
    return model, name


def build(args, classes):
    """``(model, head parameter prefix, preprocessing spec, description)`` for the ``--backbone`` given."""
    source = args.backbone
    spec = {"channels": 1, "mean": None, "std": None, "size": None}
    if source.endswith((".json", ".json.gz")):
        graph = ir.load(source, weights=args.weights)
        backbone, features = _ir_backbone(graph)
        kind = "IR graph"
    elif source.endswith((".pt", ".pth")):
        ckpt = load_checkpoint(source)
        arch = (ckpt.get("recipe") or {}).get("model") or args.arch
        state = ckpt["model"]
        last = [k for k in state if k.endswith(".weight") and state[k].dim() == 2][-1]
        model = build_model(arch, state[last].shape[0])
        model.load_state_dict(state)
        model, head = _replace_last_linear(model, classes)
        spec["size"] = 28
        return model, head + ".", spec, f"torch checkpoint ({arch})"
    else:
        entry = zoo.info(source)
        backbone, features = _ir_backbone(zoo.load(source, framework="ir"))
        spec.update(entry.input)
        spec["size"] = entry.input["size"][0]
        kind = f"zoo entry ({entry.architecture}, {entry.pattern}, sparsity {entry.sparsity:.4f})"
    if spec["size"] is None:
        spec["size"] = 28
    model = nn.Sequential(collections.OrderedDict(backbone=backbone, head=nn.Linear(features, classes)))
    return model, "head.", spec, kind


def _reinitialise(model, seed):
    """Every layer back to torch's default initial weights (the from-scratch baseline)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif isinstance(getattr(module, "bias", None), nn.Parameter):  # the IR's separate bias_add layers
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()


def _cifar10(root):
    try:
        import torchvision
        train = torchvision.datasets.CIFAR10(root, train=True, download=True)
        test = torchvision.datasets.CIFAR10(root, train=False, download=True)
    except Exception as e:  # no network, no torchvision: one line, not a traceback
        raise ConfigError(f"CIFAR-10 needs torchvision and a network (or its files in {root}): {e}") from None

    def images(ds):
        return (np.asarray(ds.data).transpose(0, 3, 1, 2).astype(np.float32) / 255.0), np.asarray(ds.targets)
    (xtr, ytr), (xte, yte) = images(train), images(test)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), 10, "torchvision CIFAR-10"


def load_dataset(args):
    if args.dataset == "cifar10":
        return _cifar10(args.data_root or os.path.join(os.path.expanduser("~"), ".cache", "prunekit"))
    data = load_data(args.dataset, root=args.data_root)
    return data.x_train, data.y_train, data.x_test, data.y_test, data.classes, data.source


def _backbone_zeros(model, head):
    """``{name: zero mask}`` of the backbone's matrices and kernels (the new head excluded)."""
    return {n: (p.detach() == 0).clone() for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(head)}


@torch.no_grad()
def accuracy(model, transform, x, y, batch=500):
    model.eval()
    correct = sum(int((model(transform(torch.from_numpy(x[i:i + batch]))).argmax(1) ==
                       torch.from_numpy(y[i:i + batch])).sum()) for i in range(0, len(x), batch))
    model.train()
    return correct / max(1, len(x))


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test, classes, data_source = load_dataset(args)
    x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
    x_test, y_test = x_test[:args.test_subset], y_test[:args.test_subset]
    torch.manual_seed(args.seed)
    model, head, spec, kind = build(args, classes)
    if args.from_scratch:
        _reinitialise(model, args.seed)
        kind += ", re-initialised (from scratch)"
    size = args.input_size or spec["size"]
    transform = zoo.Transform((size, size), spec["channels"], spec.get("mean"), spec.get("std"))
    with torch.no_grad():  # a size the network cannot take (the seed CNN's flatten wants 28 x 28): say so now
        try:
            model.eval()(transform(torch.zeros(2, x_train.shape[1], size, size)))
        except RuntimeError as e:
            raise ConfigError(f"the backbone does not run on {size}x{size} input (--input-size): "
                              f"{str(e).splitlines()[0]}") from None
    model.train()
    before = _backbone_zeros(model, head)
    optimizer = pruning.SGDSparse(model.named_parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay,
                                  restore_sparsity=True, fix_sparsity=True)
    steps_per_epoch = max(1, len(x_train) // args.batch_size)
    total = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    loss_fn, history, step, started = nn.CrossEntropyLoss(), [], 0, time.time()
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    log(f"backbone: {args.backbone} [{kind}]; data: {args.dataset} ({data_source}), {len(x_train)} train / "
        f"{len(x_test)} test, {classes} classes, input {size}x{size}; {args.epochs} epochs x {steps_per_epoch} steps")
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        losses = []
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * args.batch_size:(i + 1) * args.batch_size].numpy()
            xb, yb = transform(torch.from_numpy(x_train[idx])), torch.from_numpy(y_train[idx])
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if not args.quiet and step % max(1, steps_per_epoch // 4) == 0:
                print(f"  epoch {epoch + 1}/{args.epochs} step {step}/{total} loss {losses[-1]:.4f}", flush=True)
        row = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)) if losses else None,
               "test_acc": accuracy(model, transform, x_test, y_test), "sparsity": optimizer.sparsity()[1]}
        history.append(row)
        log(f"epoch {row['epoch']}: loss {row['loss']:.4f}, test accuracy {row['test_acc']:.4f}")
        if step >= total:
            break
    after = _backbone_zeros(model, head)
    zeros_before = sum(int(m.sum()) for m in before.values())
    zeros_after = sum(int(m.sum()) for m in after.values())
    elements = sum(m.numel() for m in before.values())
    summary = {"backbone": args.backbone, "backbone_kind": kind, "from_scratch": args.from_scratch,
               "dataset": args.dataset, "data_source": data_source, "classes": classes, "input_size": size,
               "train_images": int(len(x_train)), "test_images": int(len(x_test)), "epochs": args.epochs,
               "steps": step, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "best_test_acc": max(r["test_acc"] for r in history) if history else None,
               "backbone_elements": elements, "backbone_zeros_before": zeros_before, "backbone_zeros_after": zeros_after,
               "backbone_sparsity_before": zeros_before / elements, "backbone_sparsity_after": zeros_after / elements,
               "same_zeros": all(torch.equal(before[n], after[n]) for n in before),
               "optimizer_sparsity": optimizer.sparsity()[1], "seconds": round(time.time() - started, 1),
               "history": history, "command": " ".join(["python", "examples/transfer/classify.py"] + sys.argv[1:])}
    log(f"final test accuracy {summary['final_test_acc']:.4f}; backbone sparsity {summary['backbone_sparsity_before']:.6f}"
        f" before, {summary['backbone_sparsity_after']:.6f} after fine-tuning (same zeros: {summary['same_zeros']})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="a zoo name, an IR graph (.json, with --weights) or a "
                   "`prunekit train` checkpoint (.pt)")
    p.add_argument("--weights", default=None, help="weights of an IR graph backbone (.npz or .safetensors)")
    p.add_argument("--arch", default="seed-cnn", help="architecture of a .pt without a recipe (seed-cnn, resnet18)")
    p.add_argument("--from-scratch", action="store_true", help="same network, default initial weights")
    p.add_argument("--dataset", default="fashion-mnist:5-9",
                   help="cifar10 (torchvision, needs a network), fashion-mnist[:CLASSES], mnist, digits[:CLASSES]")
    p.add_argument("--data-root", default=None)
    p.add_argument("--input-size", type=int, default=None, help="resize images to this (default: the backbone's)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None, help="the first N training images")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, OSError) as e:
        print(f"classify.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
