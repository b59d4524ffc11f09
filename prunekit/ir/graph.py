"""The IR: a graph of nodes whose inputs are node ids or weight names, plus the weights (numpy only).

It reads the original tool's node lists (TVM-Relay-like ``{"node_id", "node_type", "op_type", "inputs",
"attrs"}``; two samples are in ``tests/data``) and prunekit's own versioned format (a JSON object with
``format_version``, ``inputs``, ``nodes``, ``outputs`` and the name of its ``weights`` file). Nothing in a
file is trusted: every node is checked (:mod:`prunekit.ir.checks`) and each problem is an ``IRError``
naming the node id.
"""

import gzip
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from prunekit.io.atomic import atomic_path
from prunekit.ir.checks import OPS, IRError, check_node, infer, pads, pair

__all__ = ["IRError", "Node", "Graph", "OPS", "FORMAT_VERSION", "load", "save", "find_weights", "pair", "pads"]

FORMAT_VERSION = 1
#: Weights that ``weights="random"`` may create at most (4 GiB of float32): a W_shape of
#: ``[100000, 100000, 3, 3]`` is a damaged file, not a model to initialise.
MAX_RANDOM_ELEMENTS = 2**30
_WEIGHT_SUFFIXES = (".safetensors", ".npz")
_NODE_KEYS = {"node_id", "node_type", "node_name", "op_type", "inputs", "attrs", "shape"}
_DOC_KEYS = {"format_version", "inputs", "nodes", "outputs", "weights"}


@dataclass
class Node:
    """One operation: ``inputs`` are node ids (int) or weight names (str)."""

    id: int
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)
    name: str = None

    def to_json(self):
        out = {"node_id": self.id, "op_type": self.op, "inputs": list(self.inputs), "attrs": self.attrs or {}}
        if self.name:
            out["node_name"] = self.name
        return out


@dataclass
class Graph:
    """Nodes in topological order, graph inputs (``{id: shape}``), outputs (node ids) and weights.

    ``weights_file`` says where :func:`load` took the weights from (a path, or ``"random"``).
    """

    nodes: dict
    inputs: dict
    outputs: list
    weights: dict = field(default_factory=dict)
    weights_file: str = None

    def node(self, node_id):
        """The node with this id (edit its ``attrs`` before building a model)."""
        if node_id not in self.nodes:
            raise IRError(f"no node {node_id!r}; ids run from {min(self.nodes)} to {max(self.nodes)}")
        return self.nodes[node_id]

    def find(self, op=None, weight=None):
        """Nodes by op type and/or by a weight name they use."""
        return [n for n in self.nodes.values() if (op is None or n.op == op)
                and (weight is None or weight in n.inputs)]

    def weight_names(self):
        return [i for n in self.nodes.values() for i in n.inputs if isinstance(i, str)]

    def validate(self, weights=True):
        """Check every node, the order (no cycles), the shapes and, with ``weights``, that every weight is
        present with the shape and dtype its node expects. Raises ``IRError`` naming the node."""
        self.shapes(weights)
        return self

    def shapes(self, weights=True):
        """``{node id: output shape}`` for the graph's input shapes (after the checks of :meth:`validate`)."""
        if not self.inputs:
            raise IRError("the graph has no input")
        for nid, shape in self.inputs.items():
            if not isinstance(shape, (tuple, list)) or not shape or not all(
                    isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape):
                raise IRError(f"graph input {nid}: shape {shape!r} must be a non-empty list of positive integers")
        seen = set(self.inputs)
        for node in self.nodes.values():
            check_node(node)
            for ref in node.inputs:
                if isinstance(ref, str):
                    if weights and ref not in self.weights:
                        raise IRError(f"node {node.id}: weight {ref!r} is missing")
                    continue
                if ref == node.id or ref in self.nodes and ref not in seen:
                    raise IRError(f"node {node.id}: input {ref} comes later in the graph (a cycle or bad order)")
                if ref not in seen:
                    raise IRError(f"node {node.id}: input {ref} is defined by no node")
            seen.add(node.id)
        if not isinstance(self.outputs, (list, tuple)) or not self.outputs:
            raise IRError(f"the graph's outputs must be a non-empty list of node ids; got {self.outputs!r}")
        for out in self.outputs:
            if out not in self.nodes:
                raise IRError(f"output {out!r} is defined by no node")
        return infer(self)[0]

    def expected_weight_shapes(self):
        """``{weight name: shape}`` the attrs and the input shapes define."""
        return infer(self)[1]


def _field(item, key, kinds, what):
    value = item.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise IRError(f"node {item.get('node_id')!r}: {key} must be {what}; got {value!r}")
    return value


def _from_original(items):
    nodes, inputs = {}, {}
    if not isinstance(items, list):
        raise IRError(f"the graph's nodes must be a list; got {type(items).__name__}")
    for item in items:
        if not isinstance(item, dict) or "node_id" not in item or "op_type" not in item:
            raise IRError(f"not an IR node (needs node_id and op_type): {str(item)[:120]}")
        nid = item["node_id"]
        if not isinstance(nid, int) or isinstance(nid, bool):
            raise IRError(f"node id {nid!r} is not an integer")
        unknown = sorted(set(item) - _NODE_KEYS)
        if unknown:
            raise IRError(f"node {nid}: unknown fields {unknown}; a node has {sorted(_NODE_KEYS)}")
        if nid in nodes or nid in inputs:
            raise IRError(f"node {nid} is defined twice")
        op = _field(item, "op_type", str, "a string")
        if item.get("node_name") is not None:
            _field(item, "node_name", str, "a string")
        if item.get("node_type") == "Var" or op == "Const" and "inputs" not in item:
            shape = _field(item, "shape", list, "a list of positive integers (the input's NCHW shape)")
            inputs[nid] = tuple(shape)
            continue
        if item.get("node_type", "Call") != "Call":
            raise IRError(f"node {nid}: node_type {item['node_type']!r}; accepted: Var (an input), Call")
        refs = _field(item, "inputs", list, "a list of node ids and weight names")
        for ref in refs:
            if not isinstance(ref, (int, str)) or isinstance(ref, bool):
                raise IRError(f"node {nid}: input {ref!r} is neither a node id nor a weight name")
        attrs = item.get("attrs")
        if attrs is not None and not isinstance(attrs, dict):
            raise IRError(f"node {nid} ({op}): attrs must be an object or null; got {attrs!r}")
        nodes[nid] = Node(nid, op, list(refs), dict(attrs or {}), item.get("node_name"))
    return nodes, inputs


def _default_outputs(nodes):
    used = {ref for n in nodes.values() for ref in n.inputs if isinstance(ref, int)}
    return [nid for nid in nodes if nid not in used]


def _read_npz(path, trust_pickle):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IRError(f"{path!r} is not a readable .npz archive: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise IRError(f"{path!r} holds a single array (.npy); weights are an archive of named arrays: "
                      "np.savez(path, name=array, ...) or a .safetensors file")
    out = {}
    with archive:
        for k in archive.files:
            try:
                out[k] = archive[k]
            except ValueError as e:
                if "pickle" not in str(e).lower():
                    raise IRError(f"{path!r}: entry {k!r} cannot be read: {e}") from None
                if not trust_pickle:
                    raise IRError(f"{path!r} holds pickled objects (entry {k!r}), which can run code when loaded; "
                                  "prunekit refuses them. If you trust the file (the original tool's pickled "
                                  "dict), pass trust_pickle=True (--trust-pickle)") from None
                out.update(_unpickle(path, k))
    return out


def _unpickle(path, key):
    with np.load(path, allow_pickle=True) as archive:  # only with the explicit opt-in
        value = archive[key]
    if value.dtype == object and value.shape == ():
        value = value.item()
    if isinstance(value, dict):
        return {str(name): np.asarray(v) for name, v in value.items()}
    return {key: np.asarray(value)}


def _read_weights(path, trust_pickle):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IRError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from prunekit.io.safetensors import read_safetensors
        tensors, _ = read_safetensors(path)
        kinds = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
        out = {}
        for name, (dtype, shape, data) in tensors.items():
            if dtype not in kinds:
                raise IRError(f"{path!r}: weight {name!r} has dtype {dtype}; the IR reads {', '.join(kinds)}")
            out[name] = np.frombuffer(data, dtype=np.dtype(kinds[dtype]).newbyteorder("<")).reshape(shape).astype(
                kinds[dtype])
        return out
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):
        return _read_npz(path, trust_pickle)
    kind = "a single .npy array" if magic == b"\x93NUMPY" else "neither a .npz archive nor safetensors"
    raise IRError(f"{path!r} is {kind}; weights files are .safetensors or .npz (np.savez(path, name=array))")


def _stem(path):
    """``model`` of ``model.json`` and of ``model.json.gz``."""
    return os.path.splitext(path[:-3] if path.endswith(".gz") else path)[0]


def find_weights(json_path):
    """The weights file of a graph file as prunekit writes the pair: the name its JSON records, else
    ``<stem>.safetensors`` or ``<stem>.npz`` beside it. ``None`` when there is none."""
    json_path = os.fspath(json_path)
    stem = _stem(json_path)
    found = [stem + s for s in _WEIGHT_SUFFIXES if os.path.isfile(stem + s)]
    if len(found) > 1:
        raise IRError(f"{json_path!r} has two weights files beside it ({', '.join(found)}); pass the one to use")
    return found[0] if found else None


def _read_doc(json_path):
    where = os.fspath(json_path)
    try:
        if where.endswith(".gz"):
            with gzip.open(json_path, "rt", encoding="utf-8") as f:
                return json.load(f)
        with open(json_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise IRError(f"graph file {where!r} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        hint = "; for an ONNX model use ir.from_onnx (prunekit convert M.onnx M.json)" if where.endswith(".onnx") \
            else ""
        kind = "a binary file" if isinstance(e, UnicodeDecodeError) else f"not JSON ({e})"
        raise IRError(f"{where!r} is not an IR graph: {kind}{hint}") from None


def _parse(doc, where):
    if isinstance(doc, dict):
        if doc.get("format_version") != FORMAT_VERSION:
            raise IRError(f"{where!r} has format_version {doc.get('format_version')!r}; this prunekit reads "
                          f"{FORMAT_VERSION} and the original node lists")
        unknown = sorted(set(doc) - _DOC_KEYS)
        if unknown:
            raise IRError(f"{where!r}: unknown fields {unknown}; a prunekit IR document has {sorted(_DOC_KEYS)}")
        inputs, nodes = doc.get("inputs", []), doc.get("nodes", [])
        if not isinstance(inputs, list) or not isinstance(nodes, list):
            raise IRError(f"{where!r}: inputs and nodes must be lists")
        nodes, inputs = _from_original(inputs + nodes)
        outputs = doc.get("outputs") or _default_outputs(nodes)
        recorded = doc.get("weights")
        if recorded is not None and not isinstance(recorded, str):
            raise IRError(f"{where!r}: weights must be a file name; got {recorded!r}")
        return Graph(nodes, inputs, outputs), recorded
    if isinstance(doc, list):
        nodes, inputs = _from_original(doc)
        return Graph(nodes, inputs, _default_outputs(nodes)), None
    raise IRError(f"{where!r} is neither a node list nor a prunekit IR document")


def load(json_path, weights=None, trust_pickle=False, seed=0):
    """Read a graph (original node list or prunekit's versioned format) and its weights.

    Args:
        json_path: the graph file (``.json`` or ``.json.gz``), or its already parsed JSON document.
        weights: ``.npz`` or ``.safetensors``, or a dict ``{name: array}``. ``None``: the file the graph
            records (``ir.save`` writes its name), else ``<stem>.safetensors`` or ``<stem>.npz`` beside the
            graph; an ``IRError`` when there is none. ``"random"``: every weight initialised from the shapes
            (He-normal kernels, BN identity), for graphs that come without weights, such as the original
            tool's samples.
        trust_pickle: allow an ``.npz`` with pickled objects (the original tool's dict files).
        seed: for ``weights="random"``.
    """
    if isinstance(json_path, (dict, list)):
        where, doc = "<graph document>", json_path
    else:
        where, doc = os.fspath(json_path), _read_doc(json_path)
    graph, recorded = _parse(doc, where)
    graph.validate(weights=False)
    if isinstance(weights, str) and weights == "random":
        graph.weights, graph.weights_file = _initial_weights(graph, seed), "random"
        return graph.validate()
    if weights is None and where == "<graph document>":
        raise IRError("a graph given as a document has no file beside it: pass weights= (a path or a dict of "
                      "arrays), or weights='random'")
    given = None
    if isinstance(weights, dict):
        given, weights = {k: np.asarray(v) for k, v in weights.items()}, "the weights given"
    elif weights is None:
        if recorded is not None:
            weights = os.path.join(os.path.dirname(where), recorded)
            if not os.path.isfile(weights):
                raise IRError(f"{where!r} records its weights in {recorded!r}, which does not exist ({weights!r}); "
                              "pass weights=PATH, or weights='random' to initialise them from the shapes "
                              "(--random-weights)")
        else:
            weights = find_weights(where)
        if weights is None:
            stem = _stem(where)
            raise IRError(f"no weights for {where!r}: found neither {stem}.safetensors nor {stem}.npz; pass "
                          "weights=PATH, or weights='random' to initialise them from the shapes (--random-weights)")
    if given is not None:
        graph.weights, graph.weights_file = given, None
    else:
        graph.weights, graph.weights_file = _read_weights(weights, trust_pickle), os.fspath(weights)
    missing = sorted(set(graph.weight_names()) - set(graph.weights))
    if missing:
        users = [n.id for n in graph.nodes.values() if missing[0] in n.inputs]
        raise IRError(f"node {users[0]}: weight {missing[0]!r} is not in {os.fspath(weights)!r} "
                      f"({len(missing)} missing)")
    return graph.validate()


def _initial_weights(graph, seed):
    expected = graph.expected_weight_shapes()
    total = sum(math.prod(s) for s in expected.values())
    if total > MAX_RANDOM_ELEMENTS:
        name = max(expected, key=lambda k: math.prod(expected[k]))
        node = graph.find(weight=name)[0].id
        raise IRError(f"node {node}: initialising {total:,} weights from the attrs exceeds {MAX_RANDOM_ELEMENTS:,} "
                      f"(weight {name!r} alone has shape {expected[name]}); is the file damaged?")
    rng = np.random.default_rng(seed)
    out = {}
    for node in graph.nodes.values():
        for ref in node.inputs:
            if not isinstance(ref, str) or ref in out:
                continue
            shape = expected[ref]
            if node.op == "nn.batch_norm":
                role = node.inputs.index(ref)  # gamma, beta, mean, var
                out[ref] = np.ones(shape, np.float32) if role in (1, 4) else np.zeros(shape, np.float32)
            elif node.op == "nn.bias_add":
                out[ref] = np.zeros(shape, np.float32)
            else:
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
                out[ref] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64"}


def save(graph, json_path, weights_path=None):
    """Write prunekit's versioned format, and the weights as ``.npz`` or ``.safetensors``.

    Everything is checked before a byte is written; both files are written under temporary names and
    renamed into place only when both are complete, so an error leaves neither half of the pair. The
    graph records its weights file's name, so ``load(json_path)`` finds it.
    """
    json_path = os.fspath(json_path)
    weights_path = None if weights_path is None else os.fspath(weights_path)
    if weights_path is not None and not weights_path.endswith(_WEIGHT_SUFFIXES):
        raise IRError(f"weights file {weights_path!r} must end with .npz or .safetensors")
    if weights_path is not None and os.path.abspath(weights_path) == os.path.abspath(json_path):
        raise IRError(f"the graph and its weights cannot both be {json_path!r}")
    graph.validate()
    doc = {"format_version": FORMAT_VERSION,
           "inputs": [{"node_id": i, "node_type": "Var", "op_type": "Const", "shape": [int(d) for d in s]}
                      for i, s in graph.inputs.items()],
           "nodes": [n.to_json() for n in graph.nodes.values()], "outputs": list(graph.outputs)}
    if weights_path is not None:
        doc["weights"] = os.path.relpath(os.path.abspath(weights_path), os.path.dirname(os.path.abspath(json_path)))
    text = json.dumps(doc, indent=1)
    used = {k: np.ascontiguousarray(graph.weights[k]) for k in dict.fromkeys(graph.weight_names())}
    with atomic_path(json_path) as json_tmp:  # both complete under temporary names before either is renamed
        with open(json_tmp, "w", encoding="utf-8") as f:
            f.write(text)
        if weights_path is not None:
            with atomic_path(weights_path) as weights_tmp:  # renamed first: the graph never names a missing file
                _write_weights(weights_tmp, weights_path, used)


def _write_weights(tmp, weights_path, weights):
    if weights_path.endswith(".safetensors"):
        from prunekit.io.safetensors import write_safetensors
        write_safetensors(tmp, {k: (_ST_DTYPES[v.dtype], list(v.shape), v.astype(v.dtype.newbyteorder("<")).tobytes())
                                for k, v in weights.items()})
    else:
        with open(tmp, "wb") as f:
            np.savez(f, **weights)
