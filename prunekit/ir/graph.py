"""The IR: a graph of nodes whose inputs are node ids or weight names, plus the weights (numpy only).

It reads the original tool's node lists (``../shared/ir-samples``: TVM-Relay-like ``{"node_id",
"node_type", "op_type", "inputs", "attrs"}``) and prunekit's own versioned format (a JSON object with
``format_version``, ``nodes`` and ``outputs``). Every graph is validated on load; each problem is an
``IRError`` naming the node id.
"""

import gzip
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["IRError", "Node", "Graph", "OPS", "FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 1


class IRError(ConfigError):
    """A graph or weights file that cannot be used, with the node id at fault."""


def pair(value):
    """An attr given as one number or two, as ``(h, w)``."""
    v = [int(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def pads(value):
    """TVM padding: 1, 2 ``(h, w)`` or 4 ``(top, left, bottom, right)`` numbers -> ``(top, left, bottom, right)``."""
    v = [int(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
    if len(v) == 1:
        v = v * 2
    return (v[0], v[1], v[0], v[1]) if len(v) == 2 else tuple(v[:4])


def _ints(value, n=None):
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * n if n and len(values) == 1 else values


def _conv_shapes(a):
    return {1: tuple(_ints(a["W_shape"]))}


def _bn_shapes(a):
    c = _ints(a["_shape"])[0]
    return {i: (c,) for i in (1, 2, 3, 4)}


def _dense_shapes(a):
    shape = _ints(a["_shape"]) if "_shape" in a else None
    return {1: tuple(shape)} if shape and len(shape) == 2 else {}


def _bias_shapes(a):
    return {1: tuple(_ints(a["_shape"]))}


# op -> (number of inputs, required attrs, weight shapes from attrs keyed by input position)
OPS = {
    "nn.conv2d": (2, ("W_shape", "strides", "padding", "kernel_size"), _conv_shapes),
    "nn.conv2d_transpose": (2, ("W_shape", "strides", "padding", "kernel_size"), _conv_shapes),
    "nn.batch_norm": (5, ("_shape",), _bn_shapes),
    "nn.relu": (1, (), None),
    "sigmoid": (1, (), None),
    "add": (2, (), None),
    "nn.max_pool2d": (1, ("pool_size", "strides", "padding"), None),
    "nn.avg_pool2d": (1, ("pool_size", "strides", "padding"), None),
    "nn.global_avg_pool2d": (1, (), None),
    "nn.batch_flatten": (1, (), None),
    "nn.dense": (2, ("units",), _dense_shapes),
    "nn.bias_add": (2, ("_shape",), _bias_shapes),
}


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
    """Nodes in topological order, graph inputs (``{id: shape}``), outputs (node ids) and weights."""

    nodes: dict
    inputs: dict
    outputs: list
    weights: dict = field(default_factory=dict)

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

    def validate(self):
        """Check ops, attrs, references, order (no cycles) and weight shapes; raise ``IRError``."""
        seen = set(self.inputs)
        for node in self.nodes.values():
            if node.op not in OPS:
                raise IRError(f"node {node.id}: unknown op {node.op!r}; supported: {', '.join(OPS)}")
            arity, required, shapes = OPS[node.op]
            if len(node.inputs) != arity:
                raise IRError(f"node {node.id} ({node.op}) has {len(node.inputs)} inputs; it needs {arity}")
            missing = [a for a in required if a not in node.attrs]
            if missing:
                raise IRError(f"node {node.id} ({node.op}) lacks attrs {missing}")
            for position, ref in enumerate(node.inputs):
                if isinstance(ref, str):
                    continue
                if ref == node.id or ref in self.nodes and ref not in seen:
                    raise IRError(f"node {node.id}: input {ref} comes later in the graph (a cycle or bad order)")
                if ref not in seen:
                    raise IRError(f"node {node.id}: input {ref} is defined by no node")
            expected = shapes(node.attrs) if shapes else {}
            for position, shape in expected.items():
                ref = node.inputs[position]
                if not isinstance(ref, str):
                    raise IRError(f"node {node.id} ({node.op}): input {position} must be a weight name; got {ref!r}")
                if ref in self.weights and tuple(self.weights[ref].shape) != tuple(shape):
                    raise IRError(f"node {node.id}: weight {ref!r} has shape {tuple(self.weights[ref].shape)}; "
                                  f"its attrs say {tuple(shape)}")
            seen.add(node.id)
        for out in self.outputs:
            if out not in seen:
                raise IRError(f"output {out} is defined by no node")
        return self

    def expected_weight_shapes(self):
        """``{weight name: shape}`` the attrs define (weights with no shape in the attrs are absent)."""
        out = {}
        for node in self.nodes.values():
            shapes = OPS[node.op][2]
            for position, shape in (shapes(node.attrs) if shapes else {}).items():
                out[node.inputs[position]] = tuple(shape)
        return out


def _from_original(items):
    nodes, inputs = {}, {}
    for item in items:
        if not isinstance(item, dict) or "node_id" not in item or "op_type" not in item:
            raise IRError(f"not an IR node (needs node_id and op_type): {str(item)[:120]}")
        nid = item["node_id"]
        if not isinstance(nid, int):
            raise IRError(f"node id {nid!r} is not an integer")
        if nid in nodes or nid in inputs:
            raise IRError(f"node {nid} is defined twice")
        if item.get("node_type") == "Var" or item["op_type"] == "Const" and "inputs" not in item:
            inputs[nid] = tuple(item.get("shape") or ())
            continue
        refs = item.get("inputs") or []
        for ref in refs:
            if not isinstance(ref, (int, str)) or isinstance(ref, bool):
                raise IRError(f"node {nid}: input {ref!r} is neither a node id nor a weight name")
        nodes[nid] = Node(nid, item["op_type"], list(refs), dict(item.get("attrs") or {}), item.get("node_name"))
    return nodes, inputs


def _default_outputs(nodes):
    used = {ref for n in nodes.values() for ref in n.inputs if isinstance(ref, int)}
    return [nid for nid in nodes if nid not in used]


def _read_weights(path, trust_pickle):
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from prunekit.io.safetensors import read_safetensors
        tensors, _ = read_safetensors(path)
        kinds = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}
        out = {}
        for name, (dtype, shape, data) in tensors.items():
            if dtype not in kinds:
                raise IRError(f"{path!r}: weight {name!r} has dtype {dtype}, which the IR does not read")
            out[name] = np.frombuffer(data, dtype=kinds[dtype]).reshape(shape).copy()
        return out
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as e:
        if "pickle" not in str(e).lower():
            raise IRError(f"{path!r} is not a readable weights file: {e}") from None
        if not trust_pickle:
            raise IRError(f"{path!r} holds pickled objects, which can run code when loaded; prunekit refuses them. "
                          "If you trust the file (the original tool's pickled dict), pass trust_pickle=True") from None
    with np.load(path, allow_pickle=True) as archive:  # only with the explicit opt-in above
        out = {}
        for k in archive.files:
            value = archive[k]
            if value.dtype == object and value.shape == ():
                value = value.item()
            if isinstance(value, dict):
                out.update({name: np.asarray(v) for name, v in value.items()})
            else:
                out[k] = np.asarray(value)
        return out


def load(json_path, weights=None, trust_pickle=False, seed=0):
    """Read a graph (original node list or prunekit's versioned format) and its weights.

    Args:
        json_path: the graph file (``.json``, or ``.json.gz``), or its already parsed JSON document.
        weights: ``.npz`` or ``.safetensors``, or a dict ``{name: array}``; ``None`` initialises every
            weight from the attrs' shapes (with a warning) so that the graph can be inspected and run.
        trust_pickle: allow an ``.npz`` with pickled objects (the original tool's dict files).
        seed: for the initialised weights.
    """
    if isinstance(json_path, (dict, list)):
        doc, json_path = json_path, "<graph document>"
    else:
        try:
            opener = gzip.open if os.fspath(json_path).endswith(".gz") else open
            with opener(json_path, "rt") as f:
                doc = json.load(f)
        except json.JSONDecodeError as e:
            raise IRError(f"{os.fspath(json_path)!r} is not JSON: {e}") from None
    if isinstance(doc, dict):
        if doc.get("format_version") != FORMAT_VERSION:
            raise IRError(f"{os.fspath(json_path)!r} has format_version {doc.get('format_version')!r}; "
                          f"this prunekit reads {FORMAT_VERSION} and the original node lists")
        nodes, inputs = _from_original(doc.get("inputs", []) + doc.get("nodes", []))
        outputs = list(doc.get("outputs") or _default_outputs(nodes))
    elif isinstance(doc, list):
        nodes, inputs = _from_original(doc)
        outputs = _default_outputs(nodes)
    else:
        raise IRError(f"{os.fspath(json_path)!r} is neither a node list nor a prunekit IR document")
    graph = Graph(nodes, inputs, outputs)
    graph.validate()
    expected = graph.expected_weight_shapes()
    if weights is None:
        warnings.warn(f"prunekit.ir: no weights for {os.fspath(json_path)!r}; initialising "
                      f"{len(set(graph.weight_names()))} weights from the shapes in the attrs", stacklevel=2)
        graph.weights = _initial_weights(graph, expected, seed)
    else:
        is_dict = isinstance(weights, dict)
        graph.weights = {k: np.asarray(v) for k, v in weights.items()} if is_dict else \
            _read_weights(weights, trust_pickle)
        missing = sorted(set(graph.weight_names()) - set(graph.weights))
        if missing:
            users = [n.id for n in graph.nodes.values() if missing[0] in n.inputs]
            where = "the weights given" if is_dict else repr(os.fspath(weights))
            raise IRError(f"node {users[0]}: weight {missing[0]!r} is not in {where} "
                          f"({len(missing)} missing)")
    graph.validate()
    return graph


def _initial_weights(graph, expected, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for node in graph.nodes.values():
        for ref in node.inputs:
            if not isinstance(ref, str) or ref in out:
                continue
            shape = expected.get(ref)
            if shape is None:
                raise IRError(f"node {node.id}: weight {ref!r} has no shape in the attrs; a weights file is needed")
            if ref.endswith("running_var") or ref.endswith("gamma"):
                out[ref] = np.ones(shape, np.float32)
            elif ref.endswith(("running_mean", "beta", "bias")):
                out[ref] = np.zeros(shape, np.float32)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                out[ref] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def save(graph, json_path, weights_path=None):
    """Write prunekit's versioned format, and the weights as ``.npz`` or ``.safetensors``."""
    graph.validate()
    doc = {"format_version": FORMAT_VERSION,
           "inputs": [{"node_id": i, "node_type": "Var", "op_type": "Const", "shape": list(s)}
                      for i, s in graph.inputs.items()],
           "nodes": [n.to_json() for n in graph.nodes.values()], "outputs": list(graph.outputs)}
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1)
    if weights_path is None:
        return
    weights_path = os.fspath(weights_path)
    if weights_path.endswith(".safetensors"):
        from prunekit.io.safetensors import write_safetensors
        names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
                 np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}
        write_safetensors(weights_path, {k: (names[v.dtype], list(v.shape), np.ascontiguousarray(v).tobytes())
                                         for k, v in graph.weights.items()})
    elif weights_path.endswith(".npz"):
        np.savez(weights_path, **graph.weights)
    else:
        raise IRError(f"weights file {weights_path!r} must end with .npz or .safetensors")
