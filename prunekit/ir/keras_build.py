"""A Keras 3 model from an IR graph: ``to_keras(graph, outputs=None, input_shape=None)``.

The model takes and returns NCHW tensors like the IR (and torch), and works inside in NHWC, the layout
every Keras backend supports on the CPU: kernels are transposed on the way in (conv ``(out, in, kh, kw)``
-> ``(kh, kw, in, out)``; dense ``(units, in)`` -> ``(in, units)``), values are copied bit for bit, so
every exact zero of a sparse model stays an exact zero. Shapes are static (from the graph's input, or
``input_shape``), which lets each pooling be checked: a ``ceil_mode`` window that would hang over the
edge of an average pool, or padding an average pool must not count, is refused with the node's id
rather than approximated. The graph is validated first (for ``input_shape`` when given).

The model's two prunekit layers are registered Keras objects (:mod:`prunekit.ir.keras_layers`): a saved
model opens with ``keras.models.load_model`` after ``import prunekit.ir``.
"""

import math

import keras
import numpy as np
from keras import layers

from prunekit.ir.graph import Graph, IRError
from prunekit.ir.graph import pads as _pads
from prunekit.ir.graph import pair as _pair
from prunekit.ir.keras_layers import BiasAdd, PadConstant

__all__ = ["to_keras"]


def _name(weight_name):
    return "".join(c if c.isalnum() or c == "_" else "_" for c in weight_name)


def _pool(node, x):
    a = node.attrs
    (kh, kw), (sh, sw) = _pair(a["pool_size"]), _pair(a["strides"])
    top, left, bottom, right = _pads(a["padding"])
    h, w = int(x.shape[1]), int(x.shape[2])
    extra = [0, 0]
    for i, (size, k, s, lo, hi) in enumerate(((h, kh, sh, top, bottom), (w, kw, sw, left, right))):
        if int(a.get("ceil_mode", 0)):
            out = math.ceil((size + lo + hi - k) / s) + 1
            if (out - 1) * s >= size + lo:  # torch drops a window that would start in the padding
                out -= 1
            extra[i] = max(0, (out - 1) * s + k - (size + lo + hi))
    if node.op == "nn.max_pool2d":
        if top or left or bottom or right or any(extra):
            x = PadConstant([(top, bottom + extra[0]), (left, right + extra[1])], -np.inf)(x)
        return layers.MaxPooling2D((kh, kw), (sh, sw), padding="valid")(x)
    if any(extra) or ((top or left or bottom or right) and not int(a.get("count_include_pad", 0))):
        raise IRError(f"node {node.id}: nn.avg_pool2d with windows over the edge (ceil_mode or padding not "
                      "counted) has no exact Keras layer; to_keras refuses it")
    if top or left or bottom or right:
        x = layers.ZeroPadding2D(((top, bottom), (left, right)))(x)
    return layers.AveragePooling2D((kh, kw), (sh, sw), padding="valid")(x)


def _keras_layer(node, cls, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except ValueError as e:  # e.g. Keras refuses strides > 1 together with dilation > 1
        raise IRError(f"node {node.id} ({node.op}): Keras cannot build it: {str(e).splitlines()[0]}") from None


def _layer(node, graph, x, args, weights_out):
    a, w = node.attrs, graph.weights
    if node.op == "nn.conv2d":
        kernel = w[node.inputs[1]]
        top, left, bottom, right = _pads(a["padding"])
        if top or left or bottom or right:
            x = layers.ZeroPadding2D(((top, bottom), (left, right)))(x)
        layer = _keras_layer(node, layers.Conv2D, kernel.shape[0], tuple(kernel.shape[2:]), _pair(a["strides"]),
                             padding="valid", dilation_rate=_pair(a.get("dilation", 1)),
                             groups=_pair(a.get("groups", 1))[0], use_bias=False, name=_name(node.inputs[1]))
        weights_out.append((layer, [np.transpose(kernel, (2, 3, 1, 0))]))
        return layer(x)
    if node.op == "nn.conv2d_transpose":
        kernel = w[node.inputs[1]]
        top, left, bottom, right = _pads(a["padding"])
        if _pair(a.get("groups", 1))[0] != 1 or any(_pair(a.get("output_padding", 0))) \
                or (top, left) != (bottom, right):
            raise IRError(f"node {node.id}: nn.conv2d_transpose with groups, output_padding or asymmetric padding "
                          "is not supported by to_keras")
        layer = _keras_layer(node, layers.Conv2DTranspose, kernel.shape[1], tuple(kernel.shape[2:]),
                             _pair(a["strides"]), padding="valid", dilation_rate=_pair(a.get("dilation", 1)), use_bias=False,
                             name=_name(node.inputs[1]))
        weights_out.append((layer, [np.transpose(kernel, (2, 3, 1, 0))]))
        y = layer(x)
        return layers.Cropping2D(((top, bottom), (left, right)))(y) if top or left else y
    if node.op == "nn.batch_norm":
        gamma, beta, mean, var = (w[i] for i in node.inputs[1:])
        layer = layers.BatchNormalization(axis=-1, epsilon=float(a.get("epsilon", 1e-5)), name=_name(node.inputs[1]))
        weights_out.append((layer, [gamma, beta, mean, var]))
        return layer(x)
    if node.op == "nn.dense":
        kernel = w[node.inputs[1]]
        layer = layers.Dense(kernel.shape[0], use_bias=False, name=_name(node.inputs[1]))
        weights_out.append((layer, [kernel.T]))
        return layer(x)
    if node.op == "nn.bias_add":
        bias = w[node.inputs[1]]
        layer = BiasAdd(len(bias), name=_name(node.inputs[1]) + "_add")
        weights_out.append((layer, [bias]))
        return layer(x)
    if node.op == "nn.relu":
        return layers.ReLU()(x)
    if node.op == "sigmoid":
        return layers.Activation("sigmoid")(x)
    if node.op == "add":
        return layers.Add()(args)
    if node.op in ("nn.max_pool2d", "nn.avg_pool2d"):
        return _pool(node, x)
    if node.op == "nn.global_avg_pool2d":
        return layers.GlobalAveragePooling2D(keepdims=True)(x)
    if node.op == "nn.batch_flatten":
        return layers.Flatten()(layers.Permute((3, 1, 2))(x) if len(x.shape) == 4 else x)  # NCHW order
    raise IRError(f"node {node.id}: op {node.op} has no Keras builder")


def to_keras(graph, outputs=None, input_shape=None):
    """A ``keras.Model`` running ``graph`` (NCHW in, NCHW out) up to ``outputs`` (node ids)."""
    if len(graph.inputs) != 1:
        raise IRError("to_keras supports graphs with one input")
    (input_id, shape), = graph.inputs.items()
    shape = tuple(int(d) for d in (input_shape or shape))
    Graph(graph.nodes, {input_id: shape}, graph.outputs, graph.weights).validate()
    outputs = list(graph.outputs) if outputs is None else [outputs] if isinstance(outputs, int) else list(outputs)
    inp = keras.Input(shape=shape[1:])
    values = {input_id: layers.Permute((2, 3, 1))(inp)}  # NCHW -> NHWC
    weights_out = []
    for node in graph.nodes.values():
        args = [values[r] for r in node.inputs if isinstance(r, int)]
        try:
            values[node.id] = _layer(node, graph, args[0], args, weights_out)
        except IRError:
            raise
        except (ValueError, TypeError) as e:
            raise IRError(f"node {node.id} ({node.op}): Keras cannot build it: {str(e).splitlines()[0]}") from None
    outs = [layers.Permute((3, 1, 2))(values[o]) if len(values[o].shape) == 4 else values[o] for o in outputs]
    model = keras.Model(inp, outs[0] if len(outs) == 1 else outs)
    for layer, ws in weights_out:
        layer.set_weights([np.asarray(v, dtype=np.float32) for v in ws])
    return model
