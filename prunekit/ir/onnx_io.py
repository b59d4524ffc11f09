"""ONNX export and import of IR graphs (needs the ``onnx`` package; ``onnxruntime`` checks exports).

The ONNX graph is written directly from the IR (weights become initializers, bit for bit, so every exact
zero of a sparse model stays an exact zero). Opset 17. The batch dimension is symbolic; the element type
is the weights' dtype (float16, float32 or float64). Before a file is written the model passes
``onnx.checker`` with ``full_check`` (types and shapes) and, where onnxruntime is installed, runs once on
zeros of the graph's input shape, so a file that onnxruntime cannot run is never written; the file is
written under a temporary name and renamed into place.

Import trusts nothing: every ONNX node's op and attributes are checked against what the IR can express
(``auto_pad`` is turned into explicit padding from the static input shapes) and anything else is an
``IRError`` naming the ONNX node.
"""

import numpy as np

from prunekit.io.atomic import atomic_path
from prunekit.ir.checks import check_node, infer
from prunekit.ir.graph import Graph, IRError, Node, pads, pair

__all__ = ["to_onnx", "from_onnx", "OPSET"]

OPSET = 17
_ELEM = {np.dtype(np.float32): 1, np.dtype(np.float16): 10, np.dtype(np.float64): 11}  # TensorProto types


def _onnx():
    try:
        import onnx
        return onnx
    except ImportError:
        raise IRError("ONNX export/import needs the onnx package: pip install onnx onnxruntime") from None


def _node_onnx(node, graph, rank, init):
    """The ONNX nodes of one IR node."""
    from onnx import helper
    x, out, a = str(node.inputs[0]), str(node.id), node.attrs
    w = [r for r in node.inputs[1:] if isinstance(r, str)]
    if node.op in ("nn.conv2d", "nn.conv2d_transpose"):
        kind = "Conv" if node.op == "nn.conv2d" else "ConvTranspose"
        extra = {"output_padding": list(pair(a.get("output_padding", 0)))} if kind == "ConvTranspose" else {}
        return [helper.make_node(kind, [x, init(w[0], graph.weights[w[0]])], [out], strides=list(pair(a["strides"])),
                                 pads=list(pads(a["padding"])), kernel_shape=list(pair(a["kernel_size"])),
                                 dilations=list(pair(a.get("dilation", 1))), group=pair(a.get("groups", 1))[0],
                                 **extra)]
    if node.op == "nn.batch_norm":
        return [helper.make_node("BatchNormalization", [x] + [init(n, graph.weights[n]) for n in w], [out],
                                 epsilon=float(a.get("epsilon", 1e-5)))]
    if node.op in ("nn.relu", "sigmoid", "add", "nn.global_avg_pool2d"):
        kind = {"nn.relu": "Relu", "sigmoid": "Sigmoid", "add": "Add", "nn.global_avg_pool2d": "GlobalAveragePool"}
        return [helper.make_node(kind[node.op], [str(i) for i in node.inputs], [out])]
    if node.op in ("nn.max_pool2d", "nn.avg_pool2d"):
        kw = dict(kernel_shape=list(pair(a["pool_size"])), strides=list(pair(a["strides"])),
                  pads=list(pads(a["padding"])), ceil_mode=int(a.get("ceil_mode", 0)))
        if node.op == "nn.avg_pool2d":
            kw["count_include_pad"] = int(a.get("count_include_pad", 0))
        return [helper.make_node("MaxPool" if node.op == "nn.max_pool2d" else "AveragePool", [x], [out], **kw)]
    if node.op == "nn.batch_flatten":
        return [helper.make_node("Flatten", [x], [out], axis=1)]
    if node.op == "nn.dense":
        return [helper.make_node("Gemm", [x, init(w[0], graph.weights[w[0]])], [out], transB=1)]
    if node.op == "nn.bias_add":
        bias, r = graph.weights[w[0]], rank
        name = w[0] if r == 2 else f"{w[0]}__nchw"
        shaped = bias if r == 2 else bias.reshape((-1,) + (1,) * (r - 2))
        return [helper.make_node("Add", [x, init(name, shaped)], [out])]
    raise IRError(f"node {node.id}: op {node.op} has no ONNX export")


def _verify(model, graph, shapes, dtype):
    """``onnx.checker`` with full_check, then one onnxruntime run (where installed) on zeros."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise IRError(f"the exported ONNX model is invalid: {str(e).splitlines()[0]}") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return
    options = ort.SessionOptions()
    options.log_severity_level = 3
    feeds = {str(i): np.zeros(shapes[i], dtype) for i in graph.inputs}
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as e:
        hint = "; cast the weights to float32 first" if dtype != np.float32 else ""
        raise IRError(f"onnxruntime cannot run the exported model ({dtype.name} weights, input shapes "
                      f"{[v.shape for v in feeds.values()]}): {str(e).splitlines()[0][:300]}{hint}") from None


def to_onnx(graph, path, inputs=None, outputs=None):
    """Write ``graph`` (optionally cut at ``outputs`` node ids) as an ONNX model at ``path``."""
    _onnx()
    from onnx import helper, numpy_helper
    shapes = graph.validate().shapes()
    outputs = list(graph.outputs) if outputs is None else list(np.atleast_1d(outputs))
    if inputs is not None and list(np.atleast_1d(inputs)) != list(graph.inputs):
        raise IRError("to_onnx exports from the graph's own inputs; cut inputs are only for to_torch")
    for o in outputs:
        if o not in graph.nodes:
            raise IRError(f"output {o!r} is no node of the graph")
    dtype = next(iter(graph.weights.values())).dtype if graph.weights else np.dtype(np.float32)
    if dtype not in _ELEM:
        raise IRError(f"weights of dtype {dtype} have no ONNX export; accepted: float16, float32, float64")
    nodes, inits = [], {}

    def init(name, array):
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name
    for node in graph.nodes.values():
        rank = len(shapes[node.inputs[0]])
        nodes.extend(_node_onnx(node, graph, rank, init))
    elem = _ELEM[dtype]
    ins = [helper.make_tensor_value_info(str(i), elem, ["N"] + list(s[1:])) for i, s in graph.inputs.items()]
    outs = [helper.make_tensor_value_info(str(o), elem, ["N"] + list(shapes[o][1:])) for o in outputs]
    model = helper.make_model(helper.make_graph(nodes, "prunekit_ir", ins, outs, list(inits.values())),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="prunekit")
    _verify(model, graph, shapes, dtype)
    import onnx
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return path


# ONNX op -> attributes the importer understands (any other attribute is refused)
_ATTRS = {"Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
          "ConvTranspose": {"auto_pad", "dilations", "group", "kernel_shape", "output_padding", "pads", "strides"},
          "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"},
          "Relu": set(), "Sigmoid": set(), "GlobalAveragePool": set(), "Add": set(), "Flatten": {"axis"},
          "MaxPool": {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"},
          "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides"},
          "Gemm": {"alpha", "beta", "transA", "transB"}, "Identity": set()}
# attribute -> the value it must have when present
_FIXED = {"training_mode": 0, "spatial": 1, "storage_order": 0, "transA": 0, "transB": 1, "alpha": 1.0, "beta": 1.0,
          "axis": 1}


class _Importer:
    def __init__(self, path, g, weights):
        self.path, self.weights, self.ids, self.nodes, self.inputs = path, weights, {}, {}, {}
        self.shapes, self.next_id = {}, 0
        for value in g.input:
            if value.name in weights:
                continue
            self._input(value)

    def _input(self, value):
        t = value.type.tensor_type
        if t.elem_type not in _ELEM.values():
            raise IRError(f"{self.path!r}: input {value.name!r} has ONNX element type {t.elem_type}; the IR takes "
                          "float16, float32 or float64")
        dims = []
        for k, d in enumerate(t.shape.dim):
            if d.dim_value > 0:
                dims.append(d.dim_value)
            elif k == 0:
                dims.append(1)  # the batch: any size runs
            else:
                raise IRError(f"{self.path!r}: input {value.name!r} has a symbolic dimension {d.dim_param or '?'!r} "
                              f"at axis {k}; the IR needs static shapes (all but the batch)")
        self.ids[value.name] = self.next_id
        self.inputs[self.next_id] = self.shapes[self.next_id] = tuple(dims)
        self.next_id += 1

    def add(self, onnx_node, op, refs, attrs=None):
        node = Node(self.next_id, op, refs, attrs or {}, onnx_node.name or None)
        try:
            check_node(node)
            self.nodes[node.id] = node
            graph = Graph({node.id: node}, {r: self.shapes[r] for r in refs if isinstance(r, int)}, [node.id],
                          {r: self.weights[r] for r in refs if isinstance(r, str)})
            self.shapes[node.id] = infer(graph)[0][node.id]
        except IRError as e:
            raise IRError(f"{self.path!r}: ONNX node {_label(onnx_node)}: {e}") from None
        self.next_id += 1
        return node.id

    def ref(self, onnx_node, name):
        if name not in self.ids:
            where = "an initializer (the IR takes weights only where an op has them)" if name in self.weights \
                else "defined by no earlier node"
            raise IRError(f"{self.path!r}: ONNX node {_label(onnx_node)}: tensor {name!r} is {where}")
        return self.ids[name]

    def weight(self, onnx_node, name, what):
        if name not in self.weights:
            raise IRError(f"{self.path!r}: ONNX node {_label(onnx_node)}: its {what} {name!r} must be an initializer")
        return name


def _label(node):
    return f"{node.name or node.output[0]!r} ({node.op_type})"


def _auto_pad(path, onnx_node, a, shape, kernel, strides, dilations):
    """Explicit (top, left, bottom, right) padding for ``auto_pad``, from the static input shape."""
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    explicit = list(a.get("pads", [0, 0, 0, 0]))
    if mode == "NOTSET":
        return explicit
    if any(explicit):
        raise IRError(f"{path!r}: ONNX node {_label(onnx_node)} has both auto_pad={mode} and pads {explicit}")
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode not in ("SAME_UPPER", "SAME_LOWER") or onnx_node.op_type == "ConvTranspose":
        raise IRError(f"{path!r}: ONNX node {_label(onnx_node)}: auto_pad={mode} is not supported")
    begin, end = [], []
    for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


def _check_attrs(path, onnx_node, a):
    unknown = sorted(set(a) - _ATTRS[onnx_node.op_type])
    if unknown:
        raise IRError(f"{path!r}: ONNX node {_label(onnx_node)}: attributes {unknown} are not supported")
    for key, want in _FIXED.items():
        if key in a and a[key] != want:
            raise IRError(f"{path!r}: ONNX node {_label(onnx_node)}: {key}={a[key]!r} is not supported (only {want})")
    if list(a.get("dilations", [1, 1])) != [1, 1] and onnx_node.op_type in ("MaxPool", "AveragePool"):
        raise IRError(f"{path!r}: ONNX node {_label(onnx_node)}: dilated pooling is not supported")
    extra_outputs = [o for o in onnx_node.output[1:] if o]
    if extra_outputs:
        raise IRError(f"{path!r}: ONNX node {_label(onnx_node)}: extra outputs {extra_outputs} are not supported")


def _convert(imp, node, a, ins):
    path, op = imp.path, node.op_type
    if op in ("Conv", "ConvTranspose"):
        x = imp.ref(node, ins[0])
        w = imp.weights[imp.weight(node, ins[1], "weight")]
        if w.ndim != 4:
            raise IRError(f"{path!r}: ONNX node {_label(node)}: a {w.ndim - 2}-D convolution is not supported "
                          "(2-D only)")
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        padding = _auto_pad(path, node, a, imp.shapes[x], kernel, strides, dilations)
        attrs = {"strides": strides, "padding": padding, "kernel_size": kernel, "W_shape": list(w.shape),
                 "dilation": dilations, "groups": int(a.get("group", 1))}
        if op == "ConvTranspose":
            attrs["output_padding"] = list(a.get("output_padding", [0, 0]))
            attrs["channels"] = [w.shape[1] * attrs["groups"]]
        nid = imp.add(node, "nn.conv2d" if op == "Conv" else "nn.conv2d_transpose", [x, ins[1]], attrs)
        if len(ins) > 2 and ins[2]:
            nid = imp.add(node, "nn.bias_add", [nid, imp.weight(node, ins[2], "bias")],
                          {"_shape": list(imp.weights[ins[2]].shape)})
        return nid
    if op == "BatchNormalization":
        names = [imp.weight(node, n, "statistic") for n in ins[1:5]]
        return imp.add(node, "nn.batch_norm", [imp.ref(node, ins[0])] + names,
                       {"epsilon": float(a.get("epsilon", 1e-5)), "axis": 1,
                        "_shape": list(imp.weights[names[0]].shape)})
    if op in ("Relu", "Sigmoid", "GlobalAveragePool"):
        return imp.add(node, {"Relu": "nn.relu", "Sigmoid": "sigmoid", "GlobalAveragePool": "nn.global_avg_pool2d"}[op],
                       [imp.ref(node, ins[0])])
    if op == "Add":
        return _add(imp, node, ins)
    if op in ("MaxPool", "AveragePool"):
        x = imp.ref(node, ins[0])
        kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        attrs = {"pool_size": kernel, "strides": strides, "layout": "NCHW", "ceil_mode": int(a.get("ceil_mode", 0)),
                 "padding": _auto_pad(path, node, a, imp.shapes[x], kernel, strides, [1, 1])}
        if op == "AveragePool":
            attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        return imp.add(node, "nn.max_pool2d" if op == "MaxPool" else "nn.avg_pool2d", [x], attrs)
    if op == "Flatten":
        return imp.add(node, "nn.batch_flatten", [imp.ref(node, ins[0])])
    if op == "Gemm":
        w = imp.weights[imp.weight(node, ins[1], "weight")]
        nid = imp.add(node, "nn.dense", [imp.ref(node, ins[0]), ins[1]], {"units": int(w.shape[0]),
                                                                           "_shape": list(w.shape)})
        if len(ins) > 2 and ins[2]:
            bias = imp.weights[imp.weight(node, ins[2], "bias")]
            if bias.shape not in ((w.shape[0],), (1, w.shape[0])):
                raise IRError(f"{path!r}: ONNX node {_label(node)}: bias of shape {bias.shape} is not a per-unit bias")
            imp.weights[ins[2]] = bias.reshape(-1)
            nid = imp.add(node, "nn.bias_add", [nid, ins[2]], {"_shape": [int(w.shape[0])]})
        return nid
    raise IRError(f"{path!r}: ONNX node {_label(node)} has no IR op; supported: {', '.join(_ATTRS)}")


def _add(imp, node, ins):
    if len(ins) != 2:
        raise IRError(f"{imp.path!r}: ONNX node {_label(node)}: Add takes two inputs")
    if ins[0] in imp.weights and ins[1] not in imp.weights:
        ins = [ins[1], ins[0]]
    if ins[1] not in imp.weights:
        return imp.add(node, "add", [imp.ref(node, ins[0]), imp.ref(node, ins[1])])
    x = imp.ref(node, ins[0])
    shape, bias = imp.shapes[x], imp.weights[ins[1]]
    channels = shape[1] if len(shape) >= 2 else None
    fits = bias.size == channels and bias.shape in ((channels,) + (1,) * (len(shape) - 2),
                                                    (1, channels) + (1,) * (len(shape) - 2))
    if not fits:
        raise IRError(f"{imp.path!r}: ONNX node {_label(node)}: adds a constant of shape {bias.shape} to shape "
                      f"{shape}; the IR adds only a per-channel bias")
    name = ins[1][:-len("__nchw")] if ins[1].endswith("__nchw") else ins[1]
    imp.weights[name] = bias.reshape(-1)
    return imp.add(node, "nn.bias_add", [x, name], {"_shape": [int(channels)]})


def from_onnx(path):
    """Read an ONNX model made of the IR's op set back into a :class:`Graph`."""
    onnx = _onnx()
    from onnx import helper, numpy_helper
    try:
        model = onnx.load(str(path))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IRError(f"{str(path)!r} is not a readable ONNX model: {first}") from None
    g = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    if set(opsets) - {"", "ai.onnx"}:
        raise IRError(f"{str(path)!r} uses operator sets {sorted(set(opsets) - {'', 'ai.onnx'})}; the IR reads the "
                      "default domain only")
    weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    imp = _Importer(str(path), g, weights)
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _ATTRS:
            raise IRError(f"{imp.path!r}: ONNX node {_label(node)} has no IR op; supported: {', '.join(_ATTRS)}")
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        _check_attrs(imp.path, node, a)
        if node.op_type == "Identity" and node.input[0] in weights:  # torch's exporter aliases initializers
            weights[node.output[0]] = weights[node.input[0]]
        elif node.op_type == "Identity":
            imp.ids[node.output[0]] = imp.ref(node, node.input[0])
        else:
            imp.ids[node.output[0]] = _convert(imp, node, a, list(node.input))
    outputs = []
    for o in g.output:
        if o.name not in imp.ids or imp.ids[o.name] in imp.inputs:
            raise IRError(f"{imp.path!r}: output {o.name!r} is not computed by a node")
        outputs.append(imp.ids[o.name])
    used = {r for n in imp.nodes.values() for r in n.inputs if isinstance(r, str)}
    graph = Graph(imp.nodes, imp.inputs, outputs, {k: np.array(v) for k, v in imp.weights.items() if k in used})
    return graph.validate()
