"""``prunekit convert SRC DST`` and ``prunekit ir show FILE``: models between the IR, ONNX, Keras and torch.

Nothing is written until the model is known to be whole: the weights are the ones beside the graph (as
``ir.save`` and ``convert`` write them) or given with ``--weights``, and random weights only with
``--random-weights``; a torch checkpoint must fit its architecture exactly, and the example input must
fit the model. Every file is written under a temporary name and renamed into place, so a failed
conversion leaves nothing behind. User errors are one line (exit 2), from ``prunekit.cli.main``.
"""

import os

from prunekit.errors import ConfigError

__all__ = ["add_parsers", "convert", "ir_show"]

_SOURCES = (".json", ".onnx", ".pt", ".pth")
_TARGETS = (".json", ".onnx", ".keras")


def add_parsers(sub):
    """The ``convert`` and ``ir`` subcommands."""
    p = sub.add_parser("convert", help="convert models between the IR (.json), ONNX (.onnx), Keras (.keras) and "
                                       "torch checkpoints (.pt, source only)")
    p.add_argument("src", help=".json (IR), .onnx, or .pt/.pth (a prunekit checkpoint, or a state_dict of --arch)")
    p.add_argument("dst", help=".json (IR; weights written beside it), .onnx, or .keras (Keras 3)")
    p.add_argument("--weights", default=None, help="weights of an IR source (.npz or .safetensors); default: the "
                   "file the graph names, else SRC's name with .safetensors or .npz")
    p.add_argument("--random-weights", action="store_true", help="initialise an IR source's weights at random "
                   "from its shapes (graphs that come without weights)")
    p.add_argument("--out-weights", default=None, help="weights file of an IR destination "
                   "(default: DST with .safetensors)")
    p.add_argument("--arch", default=None, help="architecture of a .pt source: a prunekit model (seed-cnn, small-resnet; "
                   "a prunekit checkpoint names its own) or a torchvision model (resnet50, resnet18, ...)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of --arch (default: from the checkpoint)")
    p.add_argument("--input-shape", default=None, help="N,C,H,W of the model's input (default for a .pt: "
                   "1,C,28,28 for prunekit's models, 1,C,224,224 for torchvision's, C from the checkpoint)")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled .npz weights (original tool)")
    ir_cmd = sub.add_parser("ir", help="inspect IR files")
    ir_sub = ir_cmd.add_subparsers(dest="ir_command", required=True)
    show = ir_sub.add_parser("show", help="nodes, ops, parameters and sparsity of an IR graph (.json) or ONNX model")
    show.add_argument("file")
    show.add_argument("--weights", default=None, help="default: the file the graph names, else FILE's name with "
                      ".safetensors or .npz")
    show.add_argument("--random-weights", action="store_true", help="show the graph with random weights")
    show.add_argument("--trust-pickle", action="store_true")
    return [p, ir_cmd, show]


def _input_shape(text):
    parts = text.split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input-shape must be four positive integers N,C,H,W; got {text!r}")
    return shape


def _weights_arg(args):
    if args.random_weights and args.weights:
        raise ConfigError("pass --weights or --random-weights, not both")
    return "random" if args.random_weights else args.weights


def _load_graph(path, args):
    from prunekit import ir
    if path.endswith(".onnx"):
        if args.weights or args.random_weights:
            raise ConfigError(f"{path!r} holds its own weights; --weights and --random-weights are for IR graphs")
        return ir.from_onnx(path)
    return ir.load(path, weights=_weights_arg(args), trust_pickle=args.trust_pickle)


def _last_linear(model):
    import torch
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1] + ".weight" if names else None


def _read_checkpoint(src):
    import torch
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{src!r} does not exist") from None
    except Exception as e:
        raise ConfigError(f"{src!r} is not a torch checkpoint prunekit can read without unpickling code: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else {}
        return ckpt["model"], recipe.get("model")
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return ckpt, None
    raise ConfigError(f"{src!r} is neither a prunekit checkpoint nor a model state_dict")


def _build(arch, recorded, state, num_classes):
    """The model named by ``arch`` (a prunekit model when the checkpoint is prunekit's or names one)."""
    from prunekit.torch.models import MODELS, SeedCNN, build_model
    if recorded and arch and arch != recorded:
        raise ConfigError(f"the checkpoint is a prunekit {recorded!r} run; --arch says {arch!r} (leave it out)")
    arch = arch or recorded
    if arch is None:
        raise ConfigError("a state_dict needs --arch: a prunekit model (seed-cnn, small-resnet) or a torchvision "
                          "model (resnet50)")
    if recorded or arch in ("seed-cnn", "small-resnet"):
        if arch not in MODELS:
            raise ConfigError(f"unknown prunekit model {arch!r}; accepted: {', '.join(MODELS)}")
        head = _last_linear(build_model(arch, 10))
        classes = num_classes or (int(state[head].shape[0]) if head in state and state[head].dim() == 2 else 10)
        if arch == "seed-cnn":  # its input channels are a constructor argument: take them from the file
            conv1 = state.get("conv1.weight")
            channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 1
            model = SeedCNN(in_channels=channels, classes=classes)
        else:
            model = build_model(arch, classes)
        return model, f"prunekit {arch} ({classes} classes)", 28
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise ConfigError(f"--arch {arch!r} is neither a prunekit model ({', '.join(MODELS)}) nor a torchvision "
                          f"classification model (e.g. {', '.join(n for n in names if n.startswith('resnet'))})")
    probe = torchvision.models.get_model(arch)
    head = _last_linear(probe)
    classes = num_classes or (int(state[head].shape[0]) if head in state and state[head].dim() == 2 else 1000)
    return torchvision.models.get_model(arch, num_classes=classes), f"torchvision {arch} ({classes} classes)", 224


def _check_fit(src, model, label, state, num_classes_given):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = wrong[:3] + ([f"missing {missing[:3]}"] if missing else []) + \
        ([f"not in the model {unexpected[:3]}"] if unexpected else [])
    hint = "" if num_classes_given or not wrong else "; is it another architecture (--arch)?"
    raise ConfigError(f"{src!r} does not fit {label}: {'; '.join(parts)}{hint}")


def _from_checkpoint(args):
    import torch
    from prunekit import ir
    state, recorded = _read_checkpoint(args.src)
    model, label, size = _build(args.arch, recorded, state, args.num_classes)
    _check_fit(args.src, model, label, state, args.num_classes)
    model.load_state_dict(state)
    if args.input_shape:
        shape = _input_shape(args.input_shape)
    else:
        first = next((p for p in model.parameters() if p.dim() == 4), None)
        shape = (1, int(first.shape[1]) if first is not None else 3, size, size)
    try:
        return ir.from_torch(model.eval(), torch.zeros(shape))
    except ir.IRError as e:
        raise ir.IRError(f"{label} with input {shape}: {e}") from None


def _with_input_shape(graph, text):
    from prunekit import ir
    shape = _input_shape(text)
    if len(graph.inputs) != 1:
        raise ConfigError("--input-shape needs a graph with one input")
    (nid, _), = graph.inputs.items()
    graph = ir.Graph(graph.nodes, {nid: shape}, graph.outputs, graph.weights, graph.weights_file)
    try:
        return graph.validate()
    except ir.IRError as e:
        raise ir.IRError(f"--input-shape {text} does not fit the graph: {e}") from None


def _write_keras(graph, dst):
    import numpy as np

    from prunekit import ir
    from prunekit.io.atomic import atomic_path
    model = ir.to_keras(graph)
    import keras
    shape = next(iter(graph.inputs.values()))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with atomic_path(dst) as tmp:
        model.save(tmp)
        again = keras.models.load_model(tmp)  # the file must open as a user opens it, and compute the same
        a, b = (v if isinstance(v, (list, tuple)) else [v] for v in (model(x), again(x)))
        if any(not np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(a, b)):
            raise ir.IRError(f"the Keras model reloaded from {dst!r} computes differently from the one built")


def convert(args):
    from prunekit import ir
    src, dst = args.src, args.dst
    if not src.endswith(_SOURCES):
        raise ConfigError(f"cannot read {src!r}: the source must end with {', '.join(_SOURCES)}")
    if not dst.endswith(_TARGETS):
        raise ConfigError(f"cannot write {dst!r}: the destination must end with {', '.join(_TARGETS)}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConfigError(f"source and destination are the same file {src!r}")
    out_weights = None
    if dst.endswith(".json"):
        out_weights = args.out_weights or os.path.splitext(dst)[0] + ".safetensors"
        if not out_weights.endswith((".safetensors", ".npz")):
            raise ConfigError(f"--out-weights {out_weights!r} must end with .safetensors or .npz")
    elif args.out_weights:
        raise ConfigError(f"--out-weights is for an IR destination (.json); {dst!r} holds its own weights")
    if src.endswith((".pt", ".pth")):
        if args.weights or args.random_weights:
            raise ConfigError("--weights and --random-weights are for IR sources; a checkpoint holds its weights")
        graph = _from_checkpoint(args)
    else:
        if args.arch or args.num_classes:
            raise ConfigError("--arch and --num-classes are for .pt sources")
        graph = _load_graph(src, args)
        if args.input_shape:
            graph = _with_input_shape(graph, args.input_shape)
    if dst.endswith(".onnx"):
        ir.to_onnx(graph, dst)
    elif dst.endswith(".json"):
        ir.save(graph, dst, out_weights)
    else:
        _write_keras(graph, dst)
    source = {None: "", "random": " with random weights (--random-weights)"}.get(
        graph.weights_file, f" with the weights of {graph.weights_file}")
    print(f"wrote {dst}" + (f" and {out_weights}" if out_weights else "") + source)


def ir_show(args):
    import collections

    import numpy as np
    path = args.file
    graph = _load_graph(path, args)
    ops = collections.Counter(n.op for n in graph.nodes.values())
    params = sum(int(np.prod(w.shape)) for w in graph.weights.values())
    matrices = [w for w in graph.weights.values() if w.ndim >= 2]
    zeros = sum(int((w == 0).sum()) for w in matrices)
    total = sum(w.size for w in matrices)
    print(f"{path}: {len(graph.nodes)} nodes, inputs {dict(graph.inputs)}, outputs {graph.outputs}")
    for op, count in ops.most_common():
        print(f"  {op:<22} {count}")
    source = {None: "in the ONNX file", "random": "random (--random-weights)"}.get(graph.weights_file,
                                                                                   graph.weights_file)
    print(f"{len(graph.weights)} weights, {params:,} parameters ({source}); "
          f"sparsity of weight matrices/kernels {zeros / max(1, total):.4f}")
