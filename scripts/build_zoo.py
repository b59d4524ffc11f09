"""Rebuild prunekit's model zoo, entry by entry, and write its index (prunekit/zoo/index.json).

    nice -n 10 python scripts/build_zoo.py                  # every trained entry (the dense one first)
    nice -n 10 python scripts/build_zoo.py --only seed-cnn-fashion-mnist-95
    python scripts/build_zoo.py --index-only               # rewrite the index from the files already built

Each trained entry runs its recipe, the ``prunekit train`` command stored in the entry (this script adds
only ``--out`` and ``--quiet``), converts the trained model to the IR (``prunekit.ir.from_torch``),
writes it with its sparse weights (``prunekit.zoo.pack``) into prunekit/zoo/files/, and measures
the entry's metric through the zoo itself: ``zoo.load`` + ``transforms()`` on the whole test split.
The detection entries run their recipe, ``examples/detection/train.py``, and are measured through
``prunekit.zoo.detection`` (pycocotools) on its 1,000 synthetic test canvases; they need the dense small
ResNet entry in the index (their backbone). The original tool's two published models are listed with their
graphs (the original tool's samples, kept in tests/data/, gzipped) and their published figures, which are
not reproduced here.
"""

import argparse
import gzip
import hashlib
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prunekit.zoo import registry  # noqa: E402

FILES = registry.FILES_DIR
SAMPLES = os.path.join(ROOT, "tests", "data")  # the original tool's two IR graphs
CHECK_SLICE = 1000  # the first test images: the slice the tests re-measure
FMNIST_LICENSE = ("weights: Apache-2.0 (prunekit); trained on Fashion-MNIST (Zalando Research, MIT licence)")

# Schedules chosen so that each entry trains in minutes on 2 busy shared cores (0.1-0.5 s a step there).
# The dense entry trains 4 epochs; every other Fashion-MNIST entry prunes it (--init-from its checkpoint)
# in two epochs of 468 steps: a cubic ramp over the first 600 steps (a prune event every 60), then 336
# steps at the target. So the dense entry is built first. The class-0-4 backbone trains from scratch:
# 1 dense + 3 ramp + 2 fine-tune epochs on its 30,000 images (the demo's schedule).
DENSE = "seed-cnn-fashion-mnist-dense"
RUNS = os.path.join("runs", "zoo")  # relative to the repository root, as the recipes say
FROM_DENSE = ["--init-from", os.path.join(RUNS, DENSE, "checkpoint.pt"), "--dense-epochs", "0", "--ramp-epochs", "0",
              "--finetune-epochs", "2", "--pretrain-step", "0", "--sparse-step", "600", "--frequency", "60"]
# name -> (dataset, `prunekit train` flags besides --dataset, --seed and --threads, pattern)
TRAINED = {
    DENSE: ("fashion-mnist", ["--target-sparsity", "0", "--dense-epochs", "4", "--ramp-epochs", "0",
                              "--finetune-epochs", "0"], "unstructured"),
    "seed-cnn-fashion-mnist-90": ("fashion-mnist", ["--target-sparsity", "0.90", *FROM_DENSE], "unstructured"),
    "seed-cnn-fashion-mnist-95": ("fashion-mnist", ["--target-sparsity", "0.95", *FROM_DENSE], "unstructured"),
    "seed-cnn-fashion-mnist-98": ("fashion-mnist", ["--target-sparsity", "0.98", *FROM_DENSE], "unstructured"),
    "seed-cnn-fashion-mnist-bank64-95": ("fashion-mnist", ["--target-sparsity", "0.95", "--pattern", "bank64",
                                                           *FROM_DENSE], "bank64"),
    "seed-cnn-fashion-mnist-2of4": ("fashion-mnist", ["--pattern", "2:4", *FROM_DENSE], "2:4"),
    "seed-cnn-fashion-mnist-0to4-95": ("fashion-mnist:0-4", ["--target-sparsity", "0.95", "--dense-epochs", "1",
                                                             "--ramp-epochs", "3", "--finetune-epochs", "2"],
                                       "unstructured"),
}
# The small ResNet (prunekit.torch.models.SmallResNet: stem + 3 basic blocks with BN and residual adds,
# 308k parameters, ~0.12 s a step on 2 quiet cores; one thread
# is faster than two on the busy shared machine): dense 4 epochs, then the 95% entry prunes it as the
# seed-CNN entries prune theirs (a 600-step cubic ramp, then the rest of 2 epochs at the target). The
# stem conv, BN and biases stay dense (the CLI's default keywords for small-resnet).
RESNET_DENSE = "small-resnet-fashion-mnist-dense"
RESNET_FROM_DENSE = ["--init-from", os.path.join(RUNS, RESNET_DENSE, "checkpoint.pt"), *FROM_DENSE[2:]]
TRAINED.update({
    RESNET_DENSE: ("fashion-mnist", ["--model", "small-resnet", "--target-sparsity", "0", "--dense-epochs", "4",
                                     "--ramp-epochs", "0", "--finetune-epochs", "0"], "unstructured"),
    "small-resnet-fashion-mnist-95": ("fashion-mnist", ["--model", "small-resnet", "--target-sparsity", "0.95",
                                                        *RESNET_FROM_DENSE], "unstructured"),
    # the backbone of the detection table's third row (zeros kept while CenterNet trains on it)
    "small-resnet-fashion-mnist-80": ("fashion-mnist", ["--model", "small-resnet", "--target-sparsity", "0.80",
                                                        *RESNET_FROM_DENSE], "unstructured"),
})
# Detection entries: CenterNet on the dense small ResNet above (examples/detection/train.py, the commands of
# the detection table in docs/results.md), dense and with the backbone pruned to 80% on a ramp over the first
# half of the steps then kept; measured on prunekit.zoo.detection.TEST_SET (1,000 test canvases).
# name -> train.py flags besides --seed and --threads
DETECTION = {"centernet-fashion-mnist-dense": ["--target-sparsity", "0"],
             "centernet-fashion-mnist-80": ["--target-sparsity", "0.8"]}
DETECTION_CHECK = 200  # the first test canvases: the slice the tests re-measure
# the entry each --init-from entry starts from
PARENT = {n: (RESNET_DENSE if "small-resnet" in n else DENSE) for n, (_, flags, _) in TRAINED.items()
          if "--init-from" in flags}

_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": 3}
PUBLISHED = [
    {"name": "resnet50v1d-imagenet-95-original", "task": "classification", "architecture": "resnet50-v1d",
     "dataset": "imagenet", "pattern": "block1x4", "sparsity": 0.95, "metrics": {"top1": 0.746},
     "recipe": "the original tool's (not published); not reproduced here",
     "graph": "resnet50v1d.json",
     "source": "graph: the original tool's IR (bundled, gzipped); weights: the original tool published them, "
               "prunekit does not distribute them: pass zoo.load(name, weights=PATH)",
     "license": "graph: as published by the original tool; weights: those of the file you supply",
     "input": dict(_IMAGENET, size=[224, 224], classes=1000),
     "notes": "Figures published by the original tool (ImageNet, 95% sparse, 74.6% top-1), not reproduced. "
              "Pattern: the original's default sparse_block {'4d': [-1, 4, -1, 1]} read as Block(1, 4); the "
              "seed does not say which layout this model used. Node 527 is the 2048-d feature output."},
    {"name": "resnet50v1d-centernet-coco-80-original", "task": "detection", "architecture": "resnet50-v1d-centernet",
     "dataset": "coco", "pattern": "block1x4", "sparsity": 0.80, "metrics": {"map": 0.310},
     "recipe": "the original tool's (not published); not reproduced here",
     "graph": "resnet50v1d_centernet.json",
     "source": "graph: the original tool's IR (bundled, gzipped); weights: the original tool published them, "
               "prunekit does not distribute them: pass zoo.load(name, weights=PATH)",
     "license": "graph: as published by the original tool; weights: those of the file you supply",
     "input": dict(_IMAGENET, size=[512, 512]),
     "notes": "Figures published by the original tool (COCO, 80% sparse, 31.0% mAP), not reproduced. Outputs: "
              "nodes 576 (heat map, after sigmoid), 581 and 586 (size and offset heads), each at 1/4 of the input."},
]


def _file_record(path):
    with open(path, "rb") as f:
        data = f.read()
    return {"name": os.path.basename(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "bundled": True}


def _detection_recipe(name):
    return ["python", "examples/detection/train.py", *DETECTION[name], "--seed", "0", "--threads", "1"]


def build_detection(name, runs_dir, smoke=False):
    import importlib.util

    import numpy as np
    import torch

    from prunekit import ir, zoo
    from prunekit.zoo import detection
    folder = os.path.join(ROOT, "examples", "detection")
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("detection_train", os.path.join(folder, "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    command = _detection_recipe(name)
    out = os.path.join(runs_dir, name)
    print(f"[zoo] {name}: {shlex.join(command)}", flush=True)
    argv = command[2:] + ["--quiet", "--json", os.path.join(out, "summary.json"), "--save",
                          os.path.join(out, "model.pt")] + (["--max-steps", "5"] if smoke else [])
    summary, model = train.run(train.parser().parse_args(argv))
    model.eval()
    canvas = detection.TEST_SET["canvas"]
    graph = _mxnet_names(ir.from_torch(model, torch.zeros(1, 1, canvas, canvas)))
    pruned = sorted(n.rsplit(".", 1)[0].replace(".", "_") + "_weight" for n, p in model.named_parameters()
                    if n.startswith("backbone.") and n.endswith(".weight") and p.dim() >= 2
                    and not any(k in n for k in train.DENSE_KEYWORDS)) if float(DETECTION[name][1]) else []
    zeros, total = zoo.sparsity(graph, pruned) if pruned else (0, 0)
    backbone = zoo.info(summary["backbone"])
    entry = {"name": name, "task": "detection", "architecture": "small-resnet-centernet",
             "dataset": detection.DATASET, "pattern": "unstructured", "sparsity": zeros / total if total else 0.0,
             "metrics": {}, "recipe": shlex.join(command), "files": [],
             "source": "bundled with prunekit (prunekit/zoo/files), trained here by its recipe",
             "license": FMNIST_LICENSE, "pruned": pruned,
             "input": {"size": [canvas, canvas], "channels": 1, "mean": backbone.input["mean"],
                       "std": backbone.input["std"], "classes": len(detection.CATEGORIES)},
             "notes": f"Rebuilt by `nice -n 10 python scripts/build_zoo.py --only {name}`. CenterNet (examples/"
                      f"detection/centernet.py) on {backbone.name} cut before its global pooling: a 3x3 conv + BN + "
                      "ReLU and a 4x4 stride-2 transposed conv + BN + ReLU to 1/4 of the input, then heat-map (2 "
                      "classes: top, footwear; after a sigmoid), size and offset heads (3x3 conv, ReLU, 1x1 conv). "
                      "Outputs: heat map, size, offset at 16 x 16 for a 64 x 64 canvas; decode with "
                      "prunekit.zoo.detection.decode. "
                      "Trained on 6,000 synthetic canvases (prunekit.zoo.detection.synthetic, train split, seed 0), "
                      "measured on TEST_SET (1,000 test canvases). "
                      + ("Backbone convs (not the stem) pruned to 80% over the first half of the steps, then kept. "
                         if pruned else "Nothing pruned. ")
                      + f"Training log: AP {summary['map']:.4f}, AP50 {summary['map50']:.4f} as trained."}
    path = os.path.join(FILES, f"{name}.safetensors")
    zoo.pack(graph, path, {k: entry[k] for k in ("name", "architecture", "dataset", "pattern", "recipe")})
    entry["files"] = [_file_record(path)]
    record = registry.Entry.from_json(entry)
    built = ir.to_torch(ir.load(*zoo.unpack(path)[:2])).eval()
    full = detection.evaluate(record, model=built)
    part = detection.evaluate(record, limit=DETECTION_CHECK, model=built)
    entry["metrics"] = {"map": full["map"], "map50": full["map50"]}
    entry["check"] = {"split": "test", "first": DETECTION_CHECK, "map": part["map"], "map50": part["map50"]}
    print(f"[zoo] {name}: AP {full['map']:.4f} AP50 {full['map50']:.4f} on {full['examples']} test canvases "
          f"(trained model said {summary['map']:.4f} / {summary['map50']:.4f}), sparsity {entry['sparsity']:.6f}, "
          f"{entry['files'][0]['size']} bytes", flush=True)
    np.testing.assert_allclose([full["map"], full["map50"]], [summary["map"], summary["map50"]], atol=2e-3)
    return entry


def _recipe(name):
    dataset, flags, _ = TRAINED[name]
    return ["prunekit", "train", "--dataset", dataset, *flags, "--seed", "0", "--threads", "1"]


def _seed_cnn_graph(model):
    """The seed CNN as an IR graph at 28 x 28 (its resize for other sizes lives in transforms())."""
    import torch

    import prunekit.ir as ir

    class Core(torch.nn.Module):  # the same modules, without the input resize fx cannot trace
        def __init__(self, m):
            super().__init__()
            for key in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "linear1"):
                setattr(self, key, getattr(m, key))

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.linear1(torch.flatten(x, 1))
    graph = ir.from_torch(Core(model).eval(), torch.zeros(1, 1, 28, 28))
    return _mxnet_names(graph)


def _mxnet_names(graph):
    """``conv1.weight`` -> ``conv1_weight``, ``bn1.weight`` -> ``bn1_gamma`` ...: the original IR's naming, so
    that ``to_torch`` names the modules ``conv1``, ``bn1``."""
    rename = {}
    for node in graph.nodes.values():
        for position, ref in enumerate(node.inputs):
            if not isinstance(ref, str):
                continue
            module, _, kind = ref.rpartition(".")
            if node.op == "nn.batch_norm":
                kind = {"weight": "gamma", "bias": "beta"}.get(kind, kind)
            rename[ref] = f"{module.replace('.', '_')}_{kind}"
            node.inputs[position] = rename[ref]
    graph.weights = {rename[k]: v for k, v in graph.weights.items()}
    return graph.validate()


def _small_resnet_graph(model):
    """The small ResNet as an IR graph at 28 x 28 (it takes other sizes too; its fc needs global pooling only)."""
    import torch

    import prunekit.ir as ir
    return _mxnet_names(ir.from_torch(model.eval(), torch.zeros(1, 1, 28, 28)))


_ARCH_NOTES = {
    "seed-cnn": "The seed CNN (3 stride-2 convs, BN, ReLU, linear); conv1, biases and BN dense.",
    "small-resnet": "prunekit.torch.models.SmallResNet: a stride-2 3x3 stem (32 ch), three basic blocks (32, 64, "
                    "128 ch; strides 1, 2, 2) with BN, residual adds (1x1 conv + BN shortcuts where the shape "
                    "changes), global average pooling, linear; the stem conv, biases and BN dense. A backbone "
                    "for examples/transfer/classify.py and examples/detection/.",
}


def _architecture(name):
    return "small-resnet" if name.startswith("small-resnet") else "seed-cnn"


def build(name, runs_dir, extra=()):
    import numpy as np
    import torch

    from prunekit import ir, zoo
    from prunekit.cli import main as cli
    from prunekit.torch.models import SeedCNN, SmallResNet
    from prunekit.torch.recipe import load_checkpoint
    from prunekit.zoo.measure import evaluate
    dataset, _, pattern = TRAINED[name]
    arch = _architecture(name)
    out = os.path.join(runs_dir, name)
    command = _recipe(name)
    print(f"[zoo] {name}: {shlex.join(command)}", flush=True)
    status = cli(command[1:] + list(extra) + ["--out", out, "--quiet"])
    if status:
        raise SystemExit(f"[zoo] {name}: training failed with status {status}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    state = load_checkpoint(os.path.join(out, "checkpoint.pt"))["model"]
    if arch == "seed-cnn":
        model = SeedCNN(classes=state["linear1.weight"].shape[0])
        model.load_state_dict(state)
        graph = _seed_cnn_graph(model)
    else:
        model = SmallResNet(classes=state["fc.weight"].shape[0])
        model.load_state_dict(state)
        graph = _small_resnet_graph(model)
    pruned_torch = [k for k, v in summary["per_tensor_sparsity"].items() if v > 0]
    pruned = sorted(k.rsplit(".", 1)[0].replace(".", "_") + "_weight" for k in pruned_torch)
    zeros, total = zoo.sparsity(graph, pruned) if pruned else (0, 0)
    classes = int(state["linear1.weight" if arch == "seed-cnn" else "fc.weight"].shape[0])
    entry = {"name": name, "task": "classification", "architecture": arch, "dataset": dataset,
             "pattern": pattern, "sparsity": zeros / total if total else 0.0, "metrics": {},
             "recipe": shlex.join(command), "files": [],
             "source": "bundled with prunekit (prunekit/zoo/files), trained here by its recipe",
             "license": FMNIST_LICENSE, "pruned": pruned,
             "input": {"size": [28, 28], "channels": 1, "mean": [0.0], "std": [1.0],
                       "classes": classes},
             "notes": f"Rebuilt by `nice -n 10 python scripts/build_zoo.py --only {name}`. {_ARCH_NOTES[arch]} "
                      f"Training log: final test accuracy {summary['final_test_acc']:.4f} as trained."}
    path = os.path.join(FILES, f"{name}.safetensors")
    zoo.pack(graph, path, {k: entry[k] for k in ("name", "architecture", "dataset", "pattern", "recipe")})
    entry["files"] = [_file_record(path)]
    record = registry.Entry.from_json(entry)
    built = ir.to_torch(ir.load(*zoo.unpack(path)[:2])).eval()
    full = evaluate(record, model=built)
    part = evaluate(record, limit=CHECK_SLICE, model=built)
    entry["metrics"] = {"top1": full["top1"]}
    entry["check"] = {"split": "test", "first": CHECK_SLICE, "top1": part["top1"]}
    with torch.no_grad():
        x = torch.rand(4, 1, 28, 28)
        drift = float((built(x) - model.eval()(x)).abs().max())
    print(f"[zoo] {name}: top1 {full['top1']:.4f} on {full['examples']} test images (trained model said "
          f"{summary['final_test_acc']:.4f}; IR vs torch max |diff| {drift:.2e}), sparsity {entry['sparsity']:.6f}, "
          f"{entry['files'][0]['size']} bytes", flush=True)
    np.testing.assert_allclose(full["top1"], summary["final_test_acc"], atol=2e-4)
    return entry


def _published():
    out = []
    for spec in PUBLISHED:
        spec = dict(spec)
        gz = os.path.join(FILES, spec.pop("graph") + ".gz")
        if not os.path.exists(gz):
            source = os.path.join(SAMPLES, os.path.basename(gz)[:-3])
            with open(source, "rb") as f, gzip.GzipFile(gz, "wb", mtime=0) as g:
                g.write(f.read())
        spec.update(files=[_file_record(gz)], user_weights=True, metrics_origin=registry.PUBLISHED)
        out.append(spec)
    return out


def write_index(built):
    """The index: entries just ``built``, the others kept from the current index, then the published ones."""
    old = {}
    if os.path.exists(registry.INDEX_PATH):
        with open(registry.INDEX_PATH) as f:
            old = {e["name"]: e for e in json.load(f)["entries"]}
    entries = []
    for name in [*TRAINED, *DETECTION]:
        if name in built or name in old:
            entries.append(built.get(name) or old[name])
        else:
            print(f"[zoo] {name} is not built (run --only {name}); left out of the index")
    entries += _published()
    for e in entries:
        registry.Entry.from_json(e)
    with open(registry.INDEX_PATH, "w") as f:
        json.dump({"format_version": registry.INDEX_VERSION, "entries": entries}, f, indent=1)
        f.write("\n")
    print(f"[zoo] wrote {registry.INDEX_PATH}: {len(entries)} entries")
    registry._CACHE.clear()  # the detection entries look their backbone up in the index just written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=[*TRAINED, *DETECTION],
                        help="build these entries (repeatable)")
    parser.add_argument("--index-only", action="store_true", help="only rewrite the index")
    parser.add_argument("--smoke", action="store_true", help="30 steps per entry, to check this script (the "
                        "index then holds smoke entries: do not commit it)")
    args = parser.parse_args()
    os.chdir(ROOT)  # the recipes name paths relative to the repository root
    built, names = {}, [] if args.index_only else list(args.only or [*TRAINED, *DETECTION])
    for parent in dict.fromkeys(PARENT[n] for n in names if n in PARENT):
        checkpoint = os.path.join(RUNS, parent, "checkpoint.pt")
        if parent not in names and not os.path.exists(checkpoint):
            print(f"[zoo] {checkpoint} is missing: building {parent} first (the entries pruned from it start there)")
            names.insert(0, parent)
    for name in names:
        if name in DETECTION:
            built[name] = build_detection(name, RUNS, args.smoke)
        else:
            built[name] = build(name, RUNS, ["--max-steps", "30"] if args.smoke else [])
        write_index(built)  # after every entry, so an interrupted rebuild keeps what it built
    write_index(built)


if __name__ == "__main__":
    main()
