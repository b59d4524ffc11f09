"""IR from a torch module, by ``torch.fx`` symbolic tracing: ``from_torch(module, example_input)``.

Supported: Conv2d (bias becomes a ``nn.bias_add``), ConvTranspose2d, BatchNorm2d, ReLU, Sigmoid,
MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten(1), Linear, Identity, Dropout (dropped: inference),
``+`` / ``torch.add``, ``torch.flatten(x, 1)``, ``relu`` and ``sigmoid`` as functions: the op set of
the original tool's graphs plus what torchvision's ResNets need. Anything else is an ``IRError``
naming the module or function. Weight names are the module's parameter names.
"""

import operator

import numpy as np
import torch
from torch import nn

from prunekit.ir.graph import Graph, IRError, Node

__all__ = ["from_torch"]


def _np(t):
    return t.detach().cpu().numpy().copy()


class _Converter:
    def __init__(self, root, example_input):
        self.root, self.nodes, self.weights, self.ids, self.next_id = root, {}, {}, {}, 1
        self.shape = tuple(example_input.shape)

    def add(self, op, inputs, attrs=None):
        nid = self.next_id
        self.next_id += 1
        self.nodes[nid] = Node(nid, op, list(inputs), dict(attrs or {}))
        return nid

    def weight(self, name, tensor):
        self.weights[name] = _np(tensor)
        return name

    def module(self, fx_node, m, x):
        target = fx_node.target
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise IRError(f"module {target!r}: Conv2d padding {m.padding!r} ({m.padding_mode}) is not supported")
            p = m.padding
            nid = self.add("nn.conv2d", [x, self.weight(f"{target}.weight", m.weight)],
                           {"strides": list(m.stride), "padding": [p[0], p[1], p[0], p[1]],
                            "kernel_size": list(m.kernel_size), "W_shape": list(m.weight.shape),
                            "dilation": list(m.dilation), "groups": m.groups})
            if m.bias is not None:
                nid = self.add("nn.bias_add", [nid, self.weight(f"{target}.bias", m.bias)], {"_shape": [m.out_channels]})
            return nid
        if isinstance(m, nn.ConvTranspose2d):
            p = m.padding
            nid = self.add("nn.conv2d_transpose", [x, self.weight(f"{target}.weight", m.weight)],
                           {"strides": list(m.stride), "padding": [p[0], p[1], p[0], p[1]],
                            "kernel_size": list(m.kernel_size), "W_shape": list(m.weight.shape),
                            "channels": [m.out_channels], "output_padding": list(m.output_padding),
                            "dilation": list(m.dilation), "groups": m.groups})
            if m.bias is not None:
                nid = self.add("nn.bias_add", [nid, self.weight(f"{target}.bias", m.bias)], {"_shape": [m.out_channels]})
            return nid
        if isinstance(m, nn.BatchNorm2d):
            if not m.track_running_stats or not m.affine:
                raise IRError(f"module {target!r}: BatchNorm2d needs affine=True and running statistics")
            names = [self.weight(f"{target}.{k}", getattr(m, k)) for k in ("weight", "bias", "running_mean", "running_var")]
            return self.add("nn.batch_norm", [x] + names, {"epsilon": m.eps, "axis": 1, "_shape": [m.num_features]})
        if isinstance(m, nn.ReLU):
            return self.add("nn.relu", [x])
        if isinstance(m, nn.Sigmoid):
            return self.add("sigmoid", [x])
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (m.kernel_size, m.stride, m.padding)
            pair = (lambda v: [v, v] if isinstance(v, int) else list(v))
            attrs = {"pool_size": pair(k), "strides": pair(s), "padding": pair(p), "layout": "NCHW",
                     "ceil_mode": int(m.ceil_mode)}
            if isinstance(m, nn.MaxPool2d):
                if pair(m.dilation) != [1, 1]:
                    raise IRError(f"module {target!r}: MaxPool2d with dilation is not supported")
                return self.add("nn.max_pool2d", [x], attrs)
            attrs["count_include_pad"] = int(m.count_include_pad)
            return self.add("nn.avg_pool2d", [x], attrs)
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return self.add("nn.global_avg_pool2d", [x])
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return self.add("nn.batch_flatten", [x])
        if isinstance(m, nn.Linear):
            nid = self.add("nn.dense", [x, self.weight(f"{target}.weight", m.weight)],
                           {"units": m.out_features, "_shape": list(m.weight.shape)})
            if m.bias is not None:
                nid = self.add("nn.bias_add", [nid, self.weight(f"{target}.bias", m.bias)], {"_shape": [m.out_features]})
            return nid
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        raise IRError(f"module {target!r} ({type(m).__name__}) has no IR op; supported: Conv2d, ConvTranspose2d, "
                      "BatchNorm2d, ReLU, Sigmoid, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, Linear")

    def function(self, fx_node, args):
        fn = fx_node.target
        if fn in (operator.add, operator.iadd, torch.add) and len(args) == 2 and all(isinstance(a, int) for a in args):
            return self.add("add", args)
        if fn in (torch.relu, nn.functional.relu):
            return self.add("nn.relu", [args[0]])
        if fn is torch.sigmoid:
            return self.add("sigmoid", [args[0]])
        if fn is torch.flatten and len(args) == 2 and args[1] == 1:
            return self.add("nn.batch_flatten", [args[0]])
        name = getattr(fn, "__name__", str(fn))
        raise IRError(f"function {name!r} (fx node {fx_node.name!r}) has no IR op; supported: +, torch.add, "
                      "torch.relu, torch.sigmoid, torch.flatten(x, 1)")


def from_torch(module, example_input):
    """Trace ``module`` with ``torch.fx`` and convert it to an IR :class:`Graph` (weights included)."""
    import torch.fx
    if not isinstance(example_input, torch.Tensor):
        raise IRError("from_torch takes one example input tensor (NCHW)")
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as e:
        raise IRError(f"torch.fx cannot trace {type(module).__name__}: {e}") from None
    conv = _Converter(module, example_input)
    modules = dict(traced.named_modules())
    env, inputs, outputs = {}, {}, []
    for fx_node in traced.graph.nodes:
        args = [env.get(a.name, a) if isinstance(a, torch.fx.Node) else a for a in fx_node.args]
        if fx_node.op == "placeholder":
            if inputs:
                raise IRError("from_torch supports one input")
            inputs[0] = tuple(example_input.shape)
            env[fx_node.name] = 0
        elif fx_node.op == "call_module":
            env[fx_node.name] = conv.module(fx_node, modules[fx_node.target], args[0])
        elif fx_node.op in ("call_function", "call_method"):
            if fx_node.op == "call_method":
                raise IRError(f"method {fx_node.target!r} (fx node {fx_node.name!r}) has no IR op")
            env[fx_node.name] = conv.function(fx_node, args)
        elif fx_node.op == "output":
            result = fx_node.args[0]
            results = result if isinstance(result, (tuple, list)) else [result]
            outputs = [env[r.name] for r in results]
        else:
            raise IRError(f"fx node {fx_node.name!r} ({fx_node.op} {fx_node.target}) has no IR op")
    graph = Graph(conv.nodes, inputs, outputs, {k: np.asarray(v) for k, v in conv.weights.items()})
    return graph.validate()
