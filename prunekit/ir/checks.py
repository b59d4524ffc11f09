"""What a graph must be before anything is built from it: every node's fields, attrs, inputs and shapes.

Numpy only. :func:`check_node` checks one node on its own (types, attr names and values, which inputs
are node ids and which are weight names); :func:`infer` walks the graph from its input shapes and checks
what needs the neighbours: channels against each kernel, spatial sizes that stay positive, equal shapes
at an ``add``, and the shape and dtype of every weight that is present. Each problem is an ``IRError``
naming the node id. The rules are listed in docs/spec.md ("What the IR refuses").
"""

import math

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["IRError", "OPS", "check_node", "infer", "pair", "pads"]


class IRError(ConfigError):
    """A graph or weights file that cannot be used, with the node id at fault."""


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _fail(node, message):
    raise IRError(f"node {node.id} ({node.op}): {message}")


def _ints(node, key, lengths, minimum):
    """``attrs[key]`` as a list of ints: a number or a list whose length is in ``lengths``, each >= minimum."""
    value = node.attrs[key]
    values = [value] if _is_int(value) else value
    if not isinstance(values, (list, tuple)) or len(values) not in lengths or not all(_is_int(v) for v in values):
        _fail(node, f"attr {key!r} must be {' or '.join(map(str, lengths))} integers; got {value!r}")
    if any(v < minimum for v in values):
        _fail(node, f"attr {key!r} must be integers >= {minimum}; got {value!r}")
    return [int(v) for v in values]


def pair(value):
    """An attr given as one number or two, as ``(h, w)``."""
    v = [int(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def pads(value):
    """TVM padding: 1, 2 ``(h, w)`` or 4 ``(top, left, bottom, right)`` numbers -> ``(top, left, bottom, right)``."""
    v = [int(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
    if len(v) == 1:
        v = v * 2
    return (v[0], v[1], v[0], v[1]) if len(v) == 2 else tuple(v)


# Attr kinds: (lengths, minimum) for integer lists; "flag" 0/1/bool; "number" a float >= 0; "one:<v>" a fixed value.
_PAIR, _PADS, _SHAPE4 = ((1, 2), 1), ((1, 2, 4), 0), ((4,), 1)
_CONV = {"strides": _PAIR, "padding": _PADS, "kernel_size": _PAIR, "W_shape": _SHAPE4, "dilation": _PAIR,
         "groups": ((1,), 1), "channels": ((1,), 1)}
_POOL = {"pool_size": _PAIR, "strides": _PAIR, "padding": _PADS, "layout": "one:NCHW", "ceil_mode": "flag",
         "dilation": ((1, 2), 1)}

# op -> (data inputs, weight inputs, {attr: kind}, required attrs)
OPS = {
    "nn.conv2d": (1, 1, _CONV, ("W_shape", "strides", "padding", "kernel_size")),
    "nn.conv2d_transpose": (1, 1, {**_CONV, "output_padding": ((1, 2), 0)},
                            ("W_shape", "strides", "padding", "kernel_size")),
    "nn.batch_norm": (1, 4, {"_shape": ((1,), 1), "epsilon": "number", "axis": "one:1", "center": "one:True",
                             "scale": "one:True"}, ("_shape",)),
    "nn.relu": (1, 0, {}, ()),
    "sigmoid": (1, 0, {}, ()),
    "add": (2, 0, {}, ()),
    "nn.max_pool2d": (1, 0, _POOL, ("pool_size", "strides", "padding")),
    "nn.avg_pool2d": (1, 0, {**_POOL, "count_include_pad": "flag"}, ("pool_size", "strides", "padding")),
    "nn.global_avg_pool2d": (1, 0, {"layout": "one:NCHW"}, ()),
    "nn.batch_flatten": (1, 0, {}, ()),
    "nn.dense": (1, 1, {"units": ((1,), 1), "_shape": ((2,), 1)}, ("units",)),
    "nn.bias_add": (1, 1, {"_shape": ((1,), 1), "axis": "one:1"}, ("_shape",)),
}


def _check_attr(node, key, kind):
    value = node.attrs[key]
    if kind == "flag":
        if value not in (0, 1) or isinstance(value, float):
            _fail(node, f"attr {key!r} must be 0 or 1; got {value!r}")
    elif kind == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            _fail(node, f"attr {key!r} must be a finite number >= 0; got {value!r}")
    elif isinstance(kind, str):  # "one:<value>"
        want = kind[4:]
        if str(value) != want and not (want == "True" and value == 1 and not isinstance(value, float)):
            _fail(node, f"attr {key!r} is {value!r}; the IR supports only {want}")
    else:
        _ints(node, key, *kind)


def check_node(node):
    """Check one node's op, inputs and attrs (no neighbours needed)."""
    if node.op not in OPS:
        raise IRError(f"node {node.id}: unknown op {node.op!r}; supported: {', '.join(OPS)}")
    data, weights, kinds, required = OPS[node.op]
    if len(node.inputs) != data + weights:
        _fail(node, f"has {len(node.inputs)} inputs; it needs {data + weights}")
    for position, ref in enumerate(node.inputs):
        if position < data and not _is_int(ref):
            _fail(node, f"input {position} must be a node id (an integer); got {ref!r}")
        if position >= data and (not isinstance(ref, str) or not ref):
            _fail(node, f"input {position} must be a weight name (a string); got {ref!r}")
    if not isinstance(node.attrs, dict):
        _fail(node, f"attrs must be an object; got {node.attrs!r}")
    unknown = sorted(set(node.attrs) - set(kinds))
    if unknown:
        _fail(node, f"attrs {unknown} are not supported; {node.op} takes {sorted(kinds) or 'no attrs'}")
    missing = [a for a in required if a not in node.attrs]
    if missing:
        raise IRError(f"node {node.id} ({node.op}) lacks attrs {missing}")
    for key, kind in kinds.items():
        if key in node.attrs:
            _check_attr(node, key, kind)
    if node.op.startswith("nn.conv2d"):
        _check_conv(node)
    if node.op in ("nn.max_pool2d", "nn.avg_pool2d") and pair(node.attrs.get("dilation", 1)) != (1, 1):
        _fail(node, f"a dilated pool (dilation {node.attrs['dilation']!r}) is not supported")
    if node.op == "nn.dense" and "_shape" in node.attrs and node.attrs["_shape"][0] != node.attrs["units"]:
        _fail(node, f"units {node.attrs['units']} disagrees with _shape {node.attrs['_shape']}")


def _check_conv(node):
    a = node.attrs
    w_shape, groups = a["W_shape"], a.get("groups", 1)
    groups = groups[0] if isinstance(groups, list) else groups
    if list(pair(a["kernel_size"])) != list(w_shape[2:]):
        _fail(node, f"kernel_size {a['kernel_size']!r} disagrees with W_shape {w_shape!r}")
    out = w_shape[0] if node.op == "nn.conv2d" else w_shape[1] * groups
    if node.op == "nn.conv2d" and out % groups:
        _fail(node, f"W_shape {w_shape!r}: {out} output channels do not split into {groups} groups")
    if node.op == "nn.conv2d_transpose" and w_shape[0] % groups:
        _fail(node, f"W_shape {w_shape!r}: {w_shape[0]} input channels do not split into {groups} groups")
    if "channels" in a and pair(a["channels"])[0] != out:
        _fail(node, f"channels {a['channels']!r} disagrees with W_shape {w_shape!r} ({out} output channels)")
    if node.op == "nn.conv2d_transpose":
        stride, dilation = pair(a["strides"]), pair(a.get("dilation", 1))
        for p, s, d in zip(pair(a.get("output_padding", 0)), stride, dilation):
            if p >= max(s, d):
                _fail(node, f"output_padding {a['output_padding']!r} must be smaller than the stride or dilation")


def _spatial(node, size, kernel, stride, lo, hi, dilation=1, ceil=False):
    span = size + lo + hi - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + lo:  # torch drops a window that would start in the padding
        out -= 1
    if span < 0 or out < 1:
        _fail(node, f"a spatial size of {size} is too small for kernel {kernel}, stride {stride}, padding "
                    f"({lo}, {hi}) and dilation {dilation}")
    return out


def _out_shape(node, shapes):
    """The output shape of ``node`` from its inputs' shapes (and the weight shapes it expects)."""
    a = node.attrs
    x = shapes[node.inputs[0]]

    def need_rank(rank):
        if len(x) != rank:
            _fail(node, f"needs a rank-{rank} input; node {node.inputs[0]} gives shape {tuple(x)}")
    if node.op in ("nn.conv2d", "nn.conv2d_transpose"):
        need_rank(4)
        w, groups = tuple(a["W_shape"]), pair(a.get("groups", 1))[0]
        top, left, bottom, right = pads(a["padding"])
        (sh, sw), (dh, dw) = pair(a["strides"]), pair(a.get("dilation", 1))
        if node.op == "nn.conv2d":
            if x[1] != w[1] * groups:
                _fail(node, f"input has {x[1]} channels; W_shape {list(w)} with {groups} groups takes {w[1] * groups}")
            h, wd = (_spatial(node, x[2], w[2], sh, top, bottom, dh), _spatial(node, x[3], w[3], sw, left, right, dw))
            return (x[0], w[0], h, wd), {1: w}
        if x[1] != w[0]:
            _fail(node, f"input has {x[1]} channels; W_shape {list(w)} takes {w[0]}")
        oh, ow = pair(a.get("output_padding", 0))
        h = (x[2] - 1) * sh - top - bottom + dh * (w[2] - 1) + oh + 1
        wd = (x[3] - 1) * sw - left - right + dw * (w[3] - 1) + ow + 1
        if h < 1 or wd < 1:
            _fail(node, f"the output of a {x[2]}x{x[3]} input would be {h}x{wd}")
        return (x[0], w[1] * groups, h, wd), {1: w}
    if node.op == "nn.batch_norm":
        need_rank(4)
        c = a["_shape"][0] if isinstance(a["_shape"], list) else a["_shape"]
        if x[1] != c:
            _fail(node, f"input has {x[1]} channels; _shape says {c}")
        return x, {i: (c,) for i in (1, 2, 3, 4)}
    if node.op == "add":
        other = shapes[node.inputs[1]]
        if tuple(x) != tuple(other):
            _fail(node, f"adds shapes {tuple(x)} (node {node.inputs[0]}) and {tuple(other)} (node {node.inputs[1]}); "
                        "they must be equal")
        return x, {}
    if node.op in ("nn.max_pool2d", "nn.avg_pool2d"):
        need_rank(4)
        (kh, kw), (sh, sw) = pair(a["pool_size"]), pair(a["strides"])
        top, left, bottom, right = pads(a["padding"])
        ceil = bool(a.get("ceil_mode", 0))
        return (x[0], x[1], _spatial(node, x[2], kh, sh, top, bottom, ceil=ceil),
                _spatial(node, x[3], kw, sw, left, right, ceil=ceil)), {}
    if node.op == "nn.global_avg_pool2d":
        need_rank(4)
        return (x[0], x[1], 1, 1), {}
    if node.op == "nn.batch_flatten":
        if len(x) < 2:
            _fail(node, f"needs an input of rank >= 2; got shape {tuple(x)}")
        return (x[0], math.prod(x[1:])), {}
    if node.op == "nn.dense":
        need_rank(2)
        w = (a["units"] if _is_int(a["units"]) else a["units"][0], x[1])
        if "_shape" in a and tuple(a["_shape"]) != w:
            _fail(node, f"input has {x[1]} features; _shape {a['_shape']} takes {a['_shape'][1]}")
        return (x[0], w[0]), {1: w}
    if node.op == "nn.bias_add":
        c = a["_shape"][0] if isinstance(a["_shape"], list) else a["_shape"]
        if len(x) < 2 or x[1] != c:
            _fail(node, f"input shape {tuple(x)} has no {c} channels on axis 1 for the bias")
        return x, {1: (c,)}
    return x, {}  # relu, sigmoid


def infer(graph):
    """Shapes of every node (``{id: shape}``) and the weight shapes the graph expects (``{name: shape}``).

    Weights present in ``graph.weights`` are checked against the expected shapes and must all be
    floating point of one dtype.
    """
    shapes = {nid: tuple(s) for nid, s in graph.inputs.items()}
    expected, users, dtypes = {}, {}, {}
    for node in graph.nodes.values():
        shapes[node.id], wanted = _out_shape(node, shapes)
        for position, shape in wanted.items():
            name = node.inputs[position]
            if name in expected and expected[name] != tuple(shape):
                _fail(node, f"weight {name!r} is used with shape {tuple(shape)} here and {expected[name]} by "
                            f"node {users[name]}")
            expected[name], users[name] = tuple(int(d) for d in shape), node.id
            if name in graph.weights:
                w = graph.weights[name]
                if not isinstance(w, np.ndarray) or w.dtype.kind != "f":
                    raise IRError(f"node {node.id}: weight {name!r} must be a floating-point array; got "
                                  f"{getattr(w, 'dtype', type(w).__name__)}")
                if tuple(w.shape) != expected[name]:
                    raise IRError(f"node {node.id}: weight {name!r} has shape {tuple(w.shape)}; its attrs say "
                                  f"{expected[name]}")
                dtypes.setdefault(w.dtype, (name, node.id))
    if len(dtypes) > 1:
        found = ", ".join(f"{d} ({name!r}, node {nid})" for d, (name, nid) in dtypes.items())
        raise IRError(f"the graph's weights must share one dtype; found {found}")
    return shapes, expected
