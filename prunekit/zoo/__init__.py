"""prunekit's model zoo: sparse pre-trained models to fine-tune with their zeros kept.

    >>> from prunekit import zoo
    >>> entry = zoo.info("seed-cnn-fashion-mnist-0to4-95")
    >>> entry.dataset, entry.pattern, entry.sparsity
    ('fashion-mnist:0-4', 'unstructured', 0.95)
    >>> entry.transforms()
    Transform(size=(28, 28), channels=1, mean=(0.0,), std=(1.0,))

``zoo.load(name)`` returns a torch model (``framework="ir"``: the IR graph; ``"onnx"``: an ONNX
``ModelProto``; ``"keras"``: a Keras model), built from the entry's IR graph and its sparse weights.
Entries are stored as IR graphs plus compressed sparse weights (:mod:`prunekit.zoo.files`); files are
bundled with the package or downloaded into ``$PRUNEKIT_HOME/zoo`` and checked by sha256 at every use
(:mod:`prunekit.zoo.store`). This module needs numpy only; the framework builders load lazily.
"""

import builtins
import os

import numpy as np

from prunekit.zoo.files import pack, unpack
from prunekit.zoo.registry import Entry, ZooError, entries, find
from prunekit.zoo.store import DownloadError, IntegrityError, cache_dir, fetch_file
from prunekit.zoo.transforms import Transform

__all__ = ["list", "info", "fetch", "load", "load_graph", "feature_node", "sparsity", "evaluate", "Entry", "Transform", "ZooError",
           "IntegrityError", "DownloadError", "cache_dir", "pack", "unpack", "FRAMEWORKS"]

FRAMEWORKS = ("torch", "ir", "onnx", "keras")


def list(task=None):  # noqa: A001 - the zoo's verb, as torch.hub.list
    """Every entry, or those of one ``task`` (``classification`` or ``detection``)."""
    from prunekit.zoo.registry import TASKS
    if task is not None and task not in TASKS:
        raise ZooError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return [e for e in entries() if task is None or e.task == task]


def info(name):
    """The :class:`Entry` called ``name`` (an error naming the closest names if there is none)."""
    return find(name)


def fetch(name, url=None):
    """A local, verified path to the entry's file (for entries whose weights the user supplies: its graph).

    Args:
        name: the entry.
        url: download from here (a directory URL holding the files, or the file's own URL; ``http``,
            ``https``, ``file``) even when the file is bundled. Without it a bundled file comes from the
            package, anything else from the cache or the mirror ``$PRUNEKIT_ZOO_URL``.
    """
    entry = find(name)
    paths = [fetch_file(entry.name, spec, url) for spec in entry.files]
    return paths[0]


def load_graph(name, weights=None, url=None, trust_pickle=False):
    """The entry's IR graph with its weights (``weights``: a path, for entries whose weights you supply)."""
    from prunekit import ir
    entry = find(name)
    path = fetch(name, url)
    if entry.user_weights:
        if weights is None:
            raise ZooError(f"{name}: prunekit ships only this model's graph ({entry.source}); pass "
                           f"weights=PATH (.npz or .safetensors holding the graph's weight names)")
        return ir.load(path, weights=weights, trust_pickle=trust_pickle)
    if weights is not None:
        raise ZooError(f"{name} ships its own weights; weights= is for entries whose weights the user supplies "
                       f"({', '.join(e.name for e in entries() if e.user_weights)})")
    document, arrays, _ = unpack(path)
    return ir.load(document, weights=arrays)


def feature_node(graph):
    """``(node id, size)`` of the input of the graph's last dense layer: where a new head goes."""
    dense = graph.find(op="nn.dense")
    if not dense:
        raise ZooError("the graph has no nn.dense layer to cut before; pick the outputs yourself "
                       "(ir.to_torch(graph, outputs=NODE_ID))")
    last = dense[-1]
    node = next(ref for ref in last.inputs if isinstance(ref, int))
    return node, int(graph.weights[last.inputs[1]].shape[1])


def load(name, framework="torch", weights=None, url=None, trust_pickle=False, features_only=False):
    """The entry's model, built from its IR graph and weights.

    Args:
        name: the entry (``zoo.list()``).
        framework: ``torch`` (an ``nn.Module``), ``ir`` (the graph), ``onnx`` (an ``onnx.ModelProto``) or
            ``keras`` (a Keras 3 model, NCHW in and out).
        weights: for entries whose weights the user supplies, their file.
        url: download the entry's file from here (see :func:`fetch`).
        trust_pickle: allow a pickled ``.npz`` (the original tool's weight files) for ``weights``.
        features_only: (torch) the model cut before its last dense layer, returning the features a new
            head takes; their size is the module's ``num_features``.
    """
    if framework not in FRAMEWORKS:
        raise ZooError(f"framework must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    if features_only and framework != "torch":
        raise ZooError(f"features_only=True builds a torch module; got framework={framework!r}")
    graph = load_graph(name, weights, url, trust_pickle)
    from prunekit import ir
    if framework == "ir":
        return graph
    if framework == "torch" and features_only:
        node, size = feature_node(graph)
        module = ir.to_torch(graph, outputs=node)
        module.num_features = size
        return module
    if framework == "torch":
        return ir.to_torch(graph)
    if framework == "keras":
        return ir.to_keras(graph)
    import tempfile

    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.onnx")
        ir.to_onnx(graph, path)
        return onnx.load(path)


def sparsity(graph, names):
    """``(zeros, elements)`` over the weights ``names`` of an IR graph (exact integers)."""
    missing = [n for n in names if n not in graph.weights]
    if missing:
        raise ZooError(f"the graph has no weights {missing[:3]}")
    zeros = builtins.sum(int(np.count_nonzero(graph.weights[n] == 0)) for n in names)
    return zeros, builtins.sum(int(graph.weights[n].size) for n in names)


def evaluate(name, limit=None, data_root=None, batch_size=500, model=None):
    """Re-measure an entry's metric on its data set's test split (first ``limit`` images): ``{metric: value,
    "examples": n}``. Runs the entry's :meth:`Entry.transforms` and its torch model (or ``model``)."""
    from prunekit.zoo.measure import evaluate as run
    return run(find(name), limit=limit, data_root=data_root, batch_size=batch_size, model=model)
