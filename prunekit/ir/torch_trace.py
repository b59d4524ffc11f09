"""IR from a torch module, by ``torch.fx`` tracing: ``from_torch(module, example_input)``.

Supported: Conv2d (bias becomes a ``nn.bias_add``), ConvTranspose2d, BatchNorm2d, ReLU, Sigmoid,
MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten(1), Linear, Identity, Dropout (dropped: inference),
``a + b`` / ``torch.add(a, b)`` of two tensors, ``torch.flatten(x, 1)``, ``relu`` and ``sigmoid`` as
functions or methods: the op set of the original tool's graphs plus what torchvision's ResNets need.
Anything else (another module or function, a constant operand, an argument that changes the result such
as ``alpha`` or ``divisor_override``, a BatchNorm or Dropout in training mode) is an ``IRError`` naming
the module or function. Weight names are the module's parameter names.

A module whose ``forward`` branches on its input's shape (prunekit's seed CNN resizes other sizes to
28 x 28) is traced again with the example input's shapes known (``torch.fx``'s meta tracer), so the
branch the example takes is the one converted. The built graph is then run once on the example input
and compared with the module's own output: whatever the tracer could not see is an ``IRError``, never a
silently different model.
"""

import copy
import inspect
import operator
import warnings

import numpy as np
import torch
from torch import nn

from prunekit.ir.graph import Graph, IRError, Node

__all__ = ["from_torch"]

_SUPPORTED = ("Conv2d, ConvTranspose2d, BatchNorm2d, ReLU, Sigmoid, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), "
              "Flatten, Linear, Identity, Dropout")


def _np(t):
    return t.detach().cpu().numpy().copy()


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


class _Ref:
    """A traced value that is an IR node (any other argument is a constant)."""

    def __init__(self, nid):
        self.nid = nid


def _node_id(value, what):
    if not isinstance(value, _Ref):
        raise IRError(f"{what}: operand {value!r} is a constant; the IR adds and applies ops to tensors only")
    return value.nid


class _Converter:
    def __init__(self):
        self.nodes, self.weights, self.next_id = {}, {}, 1

    def add(self, op, inputs, attrs=None):
        nid = self.next_id
        self.next_id += 1
        self.nodes[nid] = Node(nid, op, list(inputs), dict(attrs or {}))
        return _Ref(nid)

    def weight(self, name, tensor):
        self.weights[name] = _np(tensor)
        return name

    def _biased(self, ref, target, m, channels):
        if m.bias is None:
            return ref
        return self.add("nn.bias_add", [ref.nid, self.weight(f"{target}.bias", m.bias)], {"_shape": [channels]})

    def module(self, fx_node, m, args, kwargs):
        target = fx_node.target
        if kwargs or len(args) != 1:
            raise IRError(f"module {target!r} ({type(m).__name__}) is called with {len(args)} arguments and keywords "
                          f"{sorted(kwargs)}; the IR takes one input per module")
        x = _node_id(args[0], f"module {target!r}")
        if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
            return self._conv(target, m, x)
        if type(m) is nn.BatchNorm2d:
            if not m.track_running_stats or not m.affine:
                raise IRError(f"module {target!r}: BatchNorm2d needs affine=True and running statistics")
            if m.training:
                raise IRError(f"module {target!r}: BatchNorm2d is in training mode (it would normalise with each "
                              "batch's statistics); call model.eval() before converting")
            names = [self.weight(f"{target}.{k}", getattr(m, k))
                     for k in ("weight", "bias", "running_mean", "running_var")]
            return self.add("nn.batch_norm", [x] + names,
                            {"epsilon": float(m.eps), "axis": 1, "_shape": [m.num_features]})
        if type(m) is nn.ReLU:
            return self.add("nn.relu", [x])
        if type(m) is nn.Sigmoid:
            return self.add("sigmoid", [x])
        if type(m) in (nn.MaxPool2d, nn.AvgPool2d):
            return self._pool(target, m, x)
        if type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1), [1, 1]):
            return self.add("nn.global_avg_pool2d", [x])
        if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            return self.add("nn.batch_flatten", [x])
        if type(m) is nn.Linear:
            ref = self.add("nn.dense", [x, self.weight(f"{target}.weight", m.weight)],
                           {"units": m.out_features, "_shape": list(m.weight.shape)})
            return self._biased(ref, target, m, m.out_features)
        if type(m) is nn.Dropout and m.training and m.p > 0:
            raise IRError(f"module {target!r}: Dropout is in training mode; call model.eval() before converting")
        if type(m) in (nn.Identity, nn.Dropout):
            return args[0]
        raise IRError(f"module {target!r} ({type(m).__name__}) has no IR op; supported: {_SUPPORTED} (exactly these "
                      "classes, not subclasses, whose forward may differ)")

    def _conv(self, target, m, x):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise IRError(f"module {target!r}: {type(m).__name__} padding {m.padding!r} ({m.padding_mode}) is not "
                          "supported; use numeric zero padding")
        p = list(m.padding)
        attrs = {"strides": list(m.stride), "padding": [p[0], p[1], p[0], p[1]], "kernel_size": list(m.kernel_size),
                 "W_shape": list(m.weight.shape), "dilation": list(m.dilation), "groups": m.groups}
        if type(m) is nn.Conv2d:
            ref = self.add("nn.conv2d", [x, self.weight(f"{target}.weight", m.weight)], attrs)
        else:
            attrs.update(channels=[m.out_channels], output_padding=list(m.output_padding))
            ref = self.add("nn.conv2d_transpose", [x, self.weight(f"{target}.weight", m.weight)], attrs)
        return self._biased(ref, target, m, m.out_channels)

    def _pool(self, target, m, x):
        attrs = {"pool_size": _pair(m.kernel_size), "strides": _pair(m.stride), "padding": _pair(m.padding),
                 "layout": "NCHW", "ceil_mode": int(m.ceil_mode)}
        if type(m) is nn.MaxPool2d:
            if _pair(m.dilation) != [1, 1] or m.return_indices:
                raise IRError(f"module {target!r}: MaxPool2d with dilation or return_indices is not supported")
            return self.add("nn.max_pool2d", [x], attrs)
        if m.divisor_override is not None:
            raise IRError(f"module {target!r}: AvgPool2d(divisor_override={m.divisor_override}) has no IR op")
        attrs["count_include_pad"] = int(m.count_include_pad)
        return self.add("nn.avg_pool2d", [x], attrs)

    def function(self, fx_node, args, kwargs):
        fn, name = fx_node.target, getattr(fx_node.target, "__name__", str(fx_node.target))
        what = f"{fx_node.op} {name!r} (fx node {fx_node.name!r})"
        if fn in (operator.add, operator.iadd, torch.add, "add", "add_"):
            extra = {k: v for k, v in kwargs.items() if not (k == "alpha" and v == 1)}
            if len(args) != 2 or extra:
                raise IRError(f"{what}: only a + b of two tensors is supported; got {len(args)} operands and "
                              f"keywords {sorted(kwargs)}")
            return self.add("add", [_node_id(a, what) for a in args])
        if fn in (torch.relu, nn.functional.relu, "relu", "relu_") and len(args) == 1 and set(kwargs) <= {"inplace"}:
            return self.add("nn.relu", [_node_id(args[0], what)])
        if fn in (torch.sigmoid, "sigmoid") and len(args) == 1 and not kwargs:
            return self.add("sigmoid", [_node_id(args[0], what)])
        if fn in (torch.flatten, "flatten"):
            dims = dict(zip(("start_dim", "end_dim"), args[1:]), **kwargs)
            if len(args) in (2, 3) and set(dims) <= {"start_dim", "end_dim"} and dims.get("start_dim") == 1 \
                    and dims.get("end_dim", -1) == -1:
                return self.add("nn.batch_flatten", [_node_id(args[0], what)])
        raise IRError(f"{what} with {len(args)} arguments and keywords {sorted(kwargs)} has no IR op; supported: "
                      "a + b, torch.add(a, b), relu, sigmoid, torch.flatten(x, 1)")


def _trace(module, example_input):
    import torch.fx
    try:
        return torch.fx.symbolic_trace(module)
    except Exception as first:  # control flow on shapes: trace again with the example's shapes known
        try:
            from torch.fx.experimental.meta_tracer import symbolic_trace as meta_trace
        except ImportError:
            raise IRError(f"torch.fx cannot trace {type(module).__name__}: {first}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                meta_module = copy.deepcopy(module).to("meta")
                placeholder = next(iter(inspect.signature(module.forward).parameters))
                return meta_trace(meta_module, meta_args={placeholder: example_input.to("meta")})
            except Exception:
                raise IRError(f"torch.fx cannot trace {type(module).__name__}: {first}") from None


def _outputs(value):
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _compare(module, graph, example_input):
    """Run the module and the graph built from it once; an ``IRError`` when they differ."""
    from prunekit.ir.torch_build import to_torch
    with torch.no_grad():
        try:
            expected = _outputs(module(example_input))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise IRError(f"the example input of shape {tuple(example_input.shape)} does not fit "
                          f"{type(module).__name__}: {first}") from None
        built = to_torch(graph).eval()
        got = _outputs(built(example_input.detach().cpu()))
    if len(got) != len(expected) or not all(isinstance(e, torch.Tensor) for e in expected):
        raise IRError(f"{type(module).__name__} returns {len(expected)} values; the traced graph returns {len(got)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        e = e.detach().cpu()
        if g.shape != e.shape:
            raise IRError(f"output {i} of the traced graph has shape {tuple(g.shape)}; the module gives "
                          f"{tuple(e.shape)}: the trace missed something in {type(module).__name__}.forward")
        scale = float(e.abs().max()) if e.numel() else 0.0
        diff = float((g.double() - e.double()).abs().max()) if e.numel() else 0.0
        if not diff <= 1e-4 * max(scale, 1e-6) + 1e-6:
            raise IRError(f"output {i} of the traced graph differs from {type(module).__name__}'s own by up to "
                          f"{diff:.3g} (its largest value is {scale:.3g}): forward does something the trace "
                          "could not see (in-place changes, Python state, a constant); the IR refuses it")


def from_torch(module, example_input):
    """Trace ``module`` with ``torch.fx`` and convert it to an IR :class:`Graph` (weights included).

    The graph is built, run once on ``example_input`` and compared with ``module(example_input)``.
    """
    import torch.fx
    if not isinstance(module, nn.Module):
        raise IRError(f"from_torch takes an nn.Module; got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise IRError("from_torch takes one floating-point example input tensor (NCHW)")
    traced = _trace(module, example_input)
    conv = _Converter()
    modules = dict(module.named_modules())
    env, inputs, outputs = {}, {}, []

    def value(a):
        return env[a.name] if isinstance(a, torch.fx.Node) else a
    for fx_node in traced.graph.nodes:
        args = [value(a) for a in fx_node.args]
        kwargs = {k: value(v) for k, v in fx_node.kwargs.items()}
        if fx_node.op == "placeholder":
            if inputs:
                raise IRError("from_torch supports modules with one input")
            inputs[0] = tuple(example_input.shape)
            env[fx_node.name] = _Ref(0)
        elif fx_node.op == "call_module":
            env[fx_node.name] = conv.module(fx_node, modules[fx_node.target], args, kwargs)
        elif fx_node.op in ("call_function", "call_method"):
            env[fx_node.name] = conv.function(fx_node, args, kwargs)
        elif fx_node.op == "output":
            outputs = [_node_id(value(r), "the module's output") for r in _outputs(fx_node.args[0])]
        else:
            raise IRError(f"fx node {fx_node.name!r} ({fx_node.op} {fx_node.target}) has no IR op")
    graph = Graph(conv.nodes, inputs, outputs, {k: np.asarray(v) for k, v in conv.weights.items()})
    graph.validate()
    _compare(module, graph, example_input)
    return graph
