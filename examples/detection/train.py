"""Train a CenterNet detector on a sparse backbone over the synthetic Fashion-MNIST detection set, and
evaluate it with pycocotools (AP, AP50), as the seed's section 3.2 fine-tuned its 80% CenterNet.

    # dense: the zoo's dense small ResNet as the backbone, nothing pruned
    nice -n 10 python examples/detection/train.py --target-sparsity 0 --json runs/detection/dense.json
    # sparse: the same recipe, the backbone's convs pruned to 80% on a cubic schedule over the first 50%
    # of the steps, then kept at those zeros (the masks stop changing after the ramp)
    nice -n 10 python examples/detection/train.py --target-sparsity 0.8 --json runs/detection/sparse80.json
    # or keep the zeros of an already sparse zoo backbone (restore_sparsity=True, fix_sparsity=True)
    python examples/detection/train.py --backbone small-resnet-fashion-mnist-95 --keep-backbone-zeros

The zoo holds the two detectors the first two commands train (``centernet-fashion-mnist-dense`` and
``-80``, rebuilt by scripts/build_zoo.py). The backbone is a zoo classification entry cut before its global
average pooling (stride 8); the neck, heads, the backbone's stem conv, biases and batch-norm stay dense.
Optimizer: prunekit's AdamSparse (the same class for every run, with target 0 for the dense one), cosine
learning-rate decay. Prints
progress; ``--json`` writes a summary (AP, AP50, the backbone's sparsity, whether its zeros stayed put
after the ramp, the command).
"""

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import centernet  # noqa: E402
import synthetic  # noqa: E402

import prunekit.torch as pruning  # noqa: E402
from prunekit import zoo  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402

DENSE_KEYWORDS = ["bias", "beta", "gamma", "stem", "neck.", "heatmap.", "size.", "offset."]


def dataset(split, count, args):
    """The synthetic set, cached under --cache (it takes a while to paste 10,000 canvases)."""
    key = f"{split}-{count}-s{args.data_seed}-c{args.canvas}-{args.source}"
    path = os.path.join(args.cache, f"{key}.npz") if args.cache else None
    if path and os.path.exists(path):
        saved = np.load(path)
        return saved["images"], json.loads(str(saved["coco"]))
    images, coco = synthetic.make(split, count, args.data_seed, args.canvas, source=args.source,
                                  data_root=args.data_root)
    if path:
        os.makedirs(args.cache, exist_ok=True)
        np.savez_compressed(path + ".tmp.npz", images=images, coco=json.dumps(coco))
        os.replace(path + ".tmp.npz", path)
    return images, coco


def backbone_zeros(model):
    return {n: (p.detach() == 0).clone() for n, p in model.named_parameters()
            if n.startswith("backbone.") and p.dim() >= 2}


def run(args, argv=None):
    """Train and evaluate; ``argv`` (the flags given) goes into the summary's command (default: sys.argv)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    train_images, train_coco = dataset("train", args.train_images, args)
    test_images, test_coco = dataset("test", args.test_images, args)
    torch.manual_seed(args.seed)
    backbone, channels, entry = centernet.zoo_backbone(args.backbone)
    model = centernet.CenterNet(backbone, channels, classes=len(synthetic.CATEGORIES), width=args.width)
    transform = zoo.Transform((args.canvas, args.canvas), entry.input.get("channels", 1), entry.input.get("mean"),
                              entry.input.get("std"))
    target = {k: torch.from_numpy(v) for k, v in centernet.targets(train_coco, args.canvas).items()}
    steps_per_epoch = max(1, len(train_images) // args.batch_size)
    total = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps,
                                                                             args.epochs * steps_per_epoch)
    ramp = int(round(args.ramp_fraction * total))
    if args.keep_backbone_zeros and args.target_sparsity:
        raise ConfigError("--keep-backbone-zeros keeps the backbone's own zeros; it does not go with "
                          f"--target-sparsity {args.target_sparsity} (pick one)")
    prune = ({"restore_sparsity": True, "fix_sparsity": True} if args.keep_backbone_zeros else
             {"target_sparsity": args.target_sparsity, "pretrain_step": 0, "sparse_step": ramp,
              "frequency": max(1, ramp // 10)})
    optimizer = pruning.AdamSparse(model.named_parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                   keywords_no_sparse=DENSE_KEYWORDS, **prune)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    log(f"backbone {args.backbone} ({entry.architecture}, sparsity {entry.sparsity:.4f}); {len(train_images)} "
        f"train / {len(test_images)} test canvases {args.canvas}x{args.canvas} ({args.source}); {total} steps of "
        f"{args.batch_size}; " + (f"prune the backbone to {args.target_sparsity} over steps 0-{ramp}, then keep "
                                  "its zeros" if args.target_sparsity else
                                  "backbone zeros kept" if args.keep_backbone_zeros else "dense"))
    model.train()
    step, history, after_ramp = 0, [], None
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        parts = []
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            batch = {k: v[idx] for k, v in target.items()}
            x = transform(torch.from_numpy(train_images[idx.numpy()]))
            optimizer.zero_grad()
            value, part = centernet.loss(model(x), batch)
            value.backward()
            optimizer.step()
            scheduler.step()
            parts.append(part)
            step += 1
            if step == ramp + 1:  # the update at step index `ramp` (0-based) held the last prune event
                after_ramp = backbone_zeros(model)
            if not args.quiet and step % max(1, steps_per_epoch // 4) == 0:
                print(f"  epoch {epoch + 1}/{args.epochs} step {step}/{total} loss {float(value):.4f} "
                      f"(heat {part['heat']:.3f} size {part['size']:.3f} offset {part['offset']:.3f}) "
                      f"sparsity {optimizer.sparsity()[1]:.4f} {time.time() - started:.0f}s", flush=True)
        mean = {k: float(np.mean([p[k] for p in parts])) for k in ("heat", "size", "offset")} if parts else None
        row = {"epoch": epoch + 1, "step": step, "loss": mean}
        history.append(row)
        if step >= total:
            break
    detections = centernet.predict(model, transform, test_images, test_coco, top_k=args.top_k)
    metrics = centernet.coco_eval(test_coco, detections, quiet=args.quiet)
    zeros = backbone_zeros(model)
    elements = sum(m.numel() for m in zeros.values())
    pruned = {n: m for n, m in zeros.items() if not any(k in n for k in DENSE_KEYWORDS)}
    summary = {"backbone": args.backbone, "target_sparsity": args.target_sparsity,
               "keep_backbone_zeros": args.keep_backbone_zeros, **metrics, "detections": len(detections),
               "backbone_sparsity": sum(int(m.sum()) for m in zeros.values()) / max(1, elements),
               "pruned_tensors_sparsity": sum(int(m.sum()) for m in pruned.values()) /
               max(1, sum(m.numel() for m in pruned.values())),
               "same_zeros_after_ramp": (all(torch.equal(after_ramp[n], zeros[n]) for n in zeros)
                                         if after_ramp is not None else None),
               "steps": step, "ramp_steps": ramp if not args.keep_backbone_zeros else 0, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "train_images": len(train_images),
               "test_images": len(test_images), "test_boxes": len(test_coco["annotations"]), "canvas": args.canvas,
               "source": args.source, "seed": args.seed, "seconds": round(time.time() - started, 1),
               "history": history,
               "command": shlex.join(["python", "examples/detection/train.py"] + list(sys.argv[1:] if argv is None
                                                                                      else argv))}
    log(f"AP {metrics['map']:.4f}, AP50 {metrics['map50']:.4f} on {len(test_images)} test canvases; backbone "
        f"sparsity {summary['backbone_sparsity']:.4f} (pruned tensors {summary['pruned_tensors_sparsity']:.4f}); "
        f"same zeros since the ramp ended: {summary['same_zeros_after_ramp']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.save:
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        torch.save({"model": model.state_dict(), "summary": summary}, args.save)
    return summary, model


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="small-resnet-fashion-mnist-dense", help="a zoo classification entry "
                   "with a global average pooling (default %(default)s)")
    p.add_argument("--target-sparsity", type=float, default=0.0, help="prune the backbone's convs to this")
    p.add_argument("--ramp-fraction", type=float, default=0.5,
                   help="the pruning ramp's share of the steps (default %(default)s)")
    p.add_argument("--keep-backbone-zeros", action="store_true",
                   help="restore_sparsity=True, fix_sparsity=True: keep a sparse backbone's zeros")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--source", default="fashion-mnist", help="where the objects come from (fashion-mnist; "
                   "digits for offline tests)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--cache", default=os.path.join("runs", "detection", "data"),
                   help="cache the synthetic sets here ('' for none)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--width", type=int, default=32, help="channels of the neck and heads (default %(default)s)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--save", default=None, help="write the trained model's state_dict here (.pt)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        run(args, argv)
    except (ConfigError, OSError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
