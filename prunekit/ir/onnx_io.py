"""ONNX export and import of IR graphs (needs the ``onnx`` package; tests run them with onnxruntime).

The ONNX graph is written directly from the IR (weights become initializers, bit for bit, so every
exact zero of a sparse model stays an exact zero). Opset 17. The batch dimension is symbolic.
"""

import numpy as np

from prunekit.ir.graph import Graph, IRError, Node, pads, pair

__all__ = ["to_onnx", "from_onnx", "OPSET"]

OPSET = 17


def _onnx():
    try:
        import onnx
        return onnx
    except ImportError:
        raise IRError("ONNX export/import needs the onnx package: pip install onnx onnxruntime") from None


def _pair(value):
    return list(pair(value))


def _pads(value):
    top, left, bottom, right = pads(value)
    return [top, left, bottom, right]


def to_onnx(graph, path, inputs=None, outputs=None):
    """Write ``graph`` (optionally cut at ``outputs`` node ids) as an ONNX model at ``path``."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    outputs = list(graph.outputs) if outputs is None else list(np.atleast_1d(outputs))
    if inputs is not None and list(np.atleast_1d(inputs)) != list(graph.inputs):
        raise IRError("to_onnx exports from the graph's own inputs; cut inputs are only for to_torch")
    nodes, inits, rank, used_weights = [], {}, {}, set()

    def init(name, array):
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name
    for nid, shape in graph.inputs.items():
        rank[nid] = len(shape) or 4
    for node in graph.nodes.values():
        x = str(node.inputs[0])
        out, a = str(node.id), node.attrs
        w = [r for r in node.inputs[1:] if isinstance(r, str)]
        used_weights.update(w)
        r = rank[node.inputs[0]] if isinstance(node.inputs[0], int) else 4
        if node.op in ("nn.conv2d", "nn.conv2d_transpose"):
            kind = "Conv" if node.op == "nn.conv2d" else "ConvTranspose"
            extra = {"output_padding": _pair(a.get("output_padding", 0))} if kind == "ConvTranspose" else {}
            nodes.append(helper.make_node(kind, [x, init(w[0], graph.weights[w[0]])], [out],
                                          strides=_pair(a["strides"]), pads=_pads(a["padding"]),
                                          kernel_shape=_pair(a["kernel_size"]), dilations=_pair(a.get("dilation", 1)),
                                          group=int(a.get("groups", 1)), **extra))
        elif node.op == "nn.batch_norm":
            nodes.append(helper.make_node("BatchNormalization", [x] + [init(n, graph.weights[n]) for n in w], [out],
                                          epsilon=float(a.get("epsilon", 1e-5))))
        elif node.op in ("nn.relu", "sigmoid", "add", "nn.global_avg_pool2d"):
            kind = {"nn.relu": "Relu", "sigmoid": "Sigmoid", "add": "Add", "nn.global_avg_pool2d": "GlobalAveragePool"}
            nodes.append(helper.make_node(kind[node.op], [str(i) for i in node.inputs], [out]))
        elif node.op in ("nn.max_pool2d", "nn.avg_pool2d"):
            kw = dict(kernel_shape=_pair(a["pool_size"]), strides=_pair(a["strides"]), pads=_pads(a["padding"]),
                      ceil_mode=int(a.get("ceil_mode", 0)))
            if node.op == "nn.avg_pool2d":
                kw["count_include_pad"] = int(a.get("count_include_pad", 0))
            nodes.append(helper.make_node("MaxPool" if node.op == "nn.max_pool2d" else "AveragePool", [x], [out], **kw))
        elif node.op == "nn.batch_flatten":
            nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
            r = 2
        elif node.op == "nn.dense":
            nodes.append(helper.make_node("Gemm", [x, init(w[0], graph.weights[w[0]])], [out], transB=1))
            r = 2
        elif node.op == "nn.bias_add":
            bias = graph.weights[w[0]]
            name = w[0] if r == 2 else f"{w[0]}__nchw"
            shaped = bias if r == 2 else bias.reshape((-1,) + (1,) * (r - 2))
            nodes.append(helper.make_node("Add", [x, init(name, shaped)], [out]))
        else:
            raise IRError(f"node {node.id}: op {node.op} has no ONNX export")
        rank[node.id] = r
    elem = TensorProto.FLOAT
    ins = [helper.make_tensor_value_info(str(i), elem, ["N"] + list(s[1:])) for i, s in graph.inputs.items()]
    outs = [helper.make_tensor_value_info(str(o), elem, [None] * rank[o]) for o in outputs]
    model = helper.make_model(helper.make_graph(nodes, "prunekit_ir", ins, outs, list(inits.values())),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="prunekit")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def from_onnx(path):
    """Read an ONNX model made of the IR's op set back into a :class:`Graph`."""
    onnx = _onnx()
    from onnx import numpy_helper
    model = onnx.load(str(path))
    g = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    ids, nodes, inputs, next_id = {}, {}, {}, 0
    for value in g.input:
        if value.name in weights:
            continue
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        ids[value.name] = next_id
        inputs[next_id] = tuple(dims)
        next_id += 1

    def add(op, refs, attrs=None, name=None):
        nonlocal next_id
        nid = next_id
        next_id += 1
        nodes[nid] = Node(nid, op, refs, attrs or {}, name)
        return nid

    def ref(name):
        if name in weights:
            return name
        if name not in ids:
            raise IRError(f"{path!r}: tensor {name!r} is used before any node defines it")
        return ids[name]
    for node in g.node:
        a, ins = _attrs(node), list(node.input)
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            w = weights[ins[1]]
            pads = list(a.get("pads", [0, 0, 0, 0]))
            attrs = {"strides": list(a.get("strides", [1, 1])), "padding": pads,
                     "kernel_size": list(a.get("kernel_shape", w.shape[2:])), "W_shape": list(w.shape),
                     "dilation": list(a.get("dilations", [1, 1])), "groups": int(a.get("group", 1))}
            if op == "ConvTranspose":
                attrs["output_padding"] = list(a.get("output_padding", [0, 0]))
                attrs["channels"] = [w.shape[1] * attrs["groups"]]
            nid = add("nn.conv2d" if op == "Conv" else "nn.conv2d_transpose", [ref(ins[0]), ins[1]], attrs)
            if len(ins) > 2 and ins[2]:
                nid = add("nn.bias_add", [nid, ins[2]], {"_shape": list(weights[ins[2]].shape)})
        elif op == "BatchNormalization":
            nid = add("nn.batch_norm", [ref(ins[0])] + ins[1:5],
                      {"epsilon": float(a.get("epsilon", 1e-5)), "axis": 1, "_shape": list(weights[ins[1]].shape)})
        elif op in ("Relu", "Sigmoid", "GlobalAveragePool"):
            nid = add({"Relu": "nn.relu", "Sigmoid": "sigmoid", "GlobalAveragePool": "nn.global_avg_pool2d"}[op],
                      [ref(ins[0])])
        elif op == "Add" and ins[1] in weights:
            bias = weights[ins[1]].reshape(-1)
            name = ins[1][:-len("__nchw")] if ins[1].endswith("__nchw") else ins[1]
            weights[name] = bias
            nid = add("nn.bias_add", [ref(ins[0]), name], {"_shape": [len(bias)]})
        elif op == "Add":
            nid = add("add", [ref(ins[0]), ref(ins[1])])
        elif op in ("MaxPool", "AveragePool"):
            attrs = {"pool_size": list(a["kernel_shape"]), "strides": list(a.get("strides", [1, 1])),
                     "padding": list(a.get("pads", [0, 0, 0, 0])), "layout": "NCHW",
                     "ceil_mode": int(a.get("ceil_mode", 0))}
            if op == "AveragePool":
                attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
            nid = add("nn.max_pool2d" if op == "MaxPool" else "nn.avg_pool2d", [ref(ins[0])], attrs)
        elif op == "Flatten" and int(a.get("axis", 1)) == 1:
            nid = add("nn.batch_flatten", [ref(ins[0])])
        elif op == "Gemm" and int(a.get("transB", 0)) == 1 and not int(a.get("transA", 0)) \
                and float(a.get("alpha", 1.0)) == 1.0 and float(a.get("beta", 1.0)) == 1.0:
            w = weights[ins[1]]
            nid = add("nn.dense", [ref(ins[0]), ins[1]], {"units": int(w.shape[0]), "_shape": list(w.shape)})
            if len(ins) > 2 and ins[2]:
                nid = add("nn.bias_add", [nid, ins[2]], {"_shape": list(weights[ins[2]].shape)})
        else:
            raise IRError(f"{path!r}: ONNX node {node.name or node.output[0]!r} ({op}) has no IR op")
        ids[node.output[0]] = nid
    used = {r for n in nodes.values() for r in n.inputs if isinstance(r, str)}
    graph = Graph(nodes, inputs, [ids[o.name] for o in g.output], {k: v for k, v in weights.items() if k in used})
    return graph.validate()
