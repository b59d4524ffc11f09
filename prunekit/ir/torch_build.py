"""Build a runnable ``torch.nn.Module`` from an IR graph: ``to_torch(graph, inputs=None, outputs=None)``.

Parameters get stable names taken from the IR's weight names (``resnetv1d_conv0_weight`` becomes the
module ``resnetv1d_conv0`` with parameter ``weight``), so pruning optimizers, ``keywords_no_sparse``
and ``restore_sparsity`` work on the result like on any model. The module can be cut: ``outputs``
picks the node ids it returns (one tensor, or a tuple for several), ``inputs`` the node ids it starts
from; only the nodes between them are built. Edit a node's attrs (``graph.node(287).attrs["strides"]
= [1, 1]``) before building to change the model, as the seed did for 32x32 CIFAR input.
"""

import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.ir.graph import IRError
from prunekit.ir.graph import pads as _pads
from prunekit.ir.graph import pair as _pair

__all__ = ["to_torch", "IRModule"]


def _tensor(array):
    return torch.from_numpy(np.array(array, order="C"))  # a copy: read-only arrays (ONNX, mmap) need no warning


class _BiasAdd(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(_tensor(bias))

    def forward(self, x):
        return x + self.bias.reshape((1, -1) + (1,) * (x.dim() - 2))


class _Pool(nn.Module):
    """Max/avg pooling with TVM's (possibly asymmetric) padding, ceil_mode and count_include_pad."""

    def __init__(self, op, attrs):
        super().__init__()
        self.op, self.kernel, self.stride = op, _pair(attrs["pool_size"]), _pair(attrs["strides"])
        self.pads = _pads(attrs["padding"])
        self.ceil_mode = bool(attrs.get("ceil_mode", 0))
        self.count_include_pad = bool(attrs.get("count_include_pad", 0))

    def forward(self, x):
        top, left, bottom, right = self.pads
        symmetric = top == bottom and left == right
        if self.op == "nn.max_pool2d":
            if not symmetric:
                x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
                top = left = 0
            return F.max_pool2d(x, self.kernel, self.stride, (top, left), ceil_mode=self.ceil_mode)
        if not symmetric:
            raise IRError("nn.avg_pool2d with asymmetric padding is not supported")
        return F.avg_pool2d(x, self.kernel, self.stride, (top, left), ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)


def _module_name(weight_name, taken):
    base = re.sub(r"_(weight|bias|gamma|beta|running_mean|running_var|moving_mean|moving_var)$", "", weight_name)
    base = re.sub(r"[^0-9A-Za-z_]", "_", base) or "w"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _build(node, graph, taken):
    """A module for a node that holds weights (conv, BN, dense, bias_add); None for the others."""
    a, w = node.attrs, graph.weights
    if node.op in ("nn.conv2d", "nn.conv2d_transpose"):
        weight = w[node.inputs[1]]
        groups, dilation = int(a.get("groups", 1)), _pair(a.get("dilation", 1))
        top, left, bottom, right = _pads(a["padding"])
        if node.op == "nn.conv2d":
            in_ch = weight.shape[1] * groups
            m = nn.Conv2d(in_ch, weight.shape[0], tuple(weight.shape[2:]), _pair(a["strides"]),
                          (top, left) if (top, left) == (bottom, right) else 0, dilation, groups, bias=False)
            m.asymmetric = None if (top, left) == (bottom, right) else (left, right, top, bottom)
        else:
            if (top, left) != (bottom, right):
                raise IRError(f"node {node.id}: nn.conv2d_transpose with asymmetric padding is not supported")
            out_pad = _pair(a.get("output_padding", 0))
            m = nn.ConvTranspose2d(weight.shape[0], weight.shape[1] * groups, tuple(weight.shape[2:]),
                                   _pair(a["strides"]), (top, left), out_pad, groups, bias=False, dilation=dilation)
        m.weight.data = _tensor(weight)
        return _module_name(node.inputs[1], taken), m
    if node.op == "nn.batch_norm":
        gamma, beta, mean, var = (w[i] for i in node.inputs[1:])
        if int(node.attrs.get("axis", 1)) != 1:
            raise IRError(f"node {node.id}: nn.batch_norm over axis {node.attrs['axis']} is not supported (NCHW only)")
        m = nn.BatchNorm2d(len(gamma), eps=float(a.get("epsilon", 1e-5)))
        m.weight.data, m.bias.data = _tensor(gamma), _tensor(beta)
        m.running_mean.data, m.running_var.data = _tensor(mean), _tensor(var)
        return _module_name(node.inputs[1], taken), m
    if node.op == "nn.dense":
        weight = w[node.inputs[1]]
        m = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        m.weight.data = _tensor(weight)
        return _module_name(node.inputs[1], taken), m
    if node.op == "nn.bias_add":
        return _module_name(node.inputs[1], taken) + "_bias", _BiasAdd(w[node.inputs[1]])
    if node.op in ("nn.max_pool2d", "nn.avg_pool2d"):
        return None, _Pool(node.op, node.attrs)
    return None, None


def _needed(graph, outputs, inputs):
    """Node ids between ``inputs`` and ``outputs`` (walking back from the outputs)."""
    needed, stack = set(), list(outputs)
    while stack:
        nid = stack.pop()
        if nid in needed or nid in inputs:
            continue
        if nid not in graph.nodes:
            continue
        needed.add(nid)
        stack.extend(ref for ref in graph.nodes[nid].inputs if isinstance(ref, int))
    return needed


class IRModule(nn.Module):
    """A module that runs an IR graph (see :func:`to_torch`)."""

    def __init__(self, graph, inputs, outputs):
        super().__init__()
        self.input_ids, self.output_ids = list(inputs), list(outputs)
        needed = _needed(graph, outputs, set(inputs))
        self.steps, taken = [], set()
        self.layers = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        for node in graph.nodes.values():
            if node.id not in needed:
                continue
            name, module = _build(node, graph, taken)
            if module is not None and name is None:
                name = f"pool_{node.id}"
                self.pools[name] = module
            elif module is not None:
                self.layers[name] = module
            refs = [ref for ref in node.inputs if isinstance(ref, int)]
            missing = [r for r in refs if r not in needed and r not in self.input_ids]
            if missing:
                raise IRError(f"node {node.id} needs node {missing[0]}, which is outside the cut "
                              f"(inputs {self.input_ids})")
            self.steps.append((node.id, node.op, refs, name))

    def _module(self, name):
        return self.layers[name] if name in self.layers else self.pools[name]

    def forward(self, *xs):
        if len(xs) != len(self.input_ids):
            raise IRError(f"this module takes {len(self.input_ids)} inputs (nodes {self.input_ids}); got {len(xs)}")
        values = dict(zip(self.input_ids, xs))
        for nid, op, refs, name in self.steps:
            args = [values[r] for r in refs]
            if name is not None:
                module = self._module(name)
                x = args[0]
                if getattr(module, "asymmetric", None):
                    x = F.pad(x, module.asymmetric)
                values[nid] = module(x)
            elif op == "nn.relu":
                values[nid] = torch.relu(args[0])
            elif op == "sigmoid":
                values[nid] = torch.sigmoid(args[0])
            elif op == "add":
                values[nid] = args[0] + args[1]
            elif op == "nn.global_avg_pool2d":
                values[nid] = args[0].mean(dim=(2, 3), keepdim=True)
            elif op == "nn.batch_flatten":
                values[nid] = torch.flatten(args[0], 1)
            else:
                raise IRError(f"node {nid}: op {op} has no torch builder")
        out = [values[o] for o in self.output_ids]
        return out[0] if len(out) == 1 else tuple(out)


def to_torch(graph, inputs=None, outputs=None):
    """An ``nn.Module`` running ``graph`` from ``inputs`` (node ids; default: the graph's inputs) to
    ``outputs`` (node ids; default: the graph's outputs, i.e. nodes no other node consumes)."""
    inputs = list(graph.inputs) if inputs is None else [inputs] if isinstance(inputs, int) else list(inputs)
    outputs = list(graph.outputs) if outputs is None else [outputs] if isinstance(outputs, int) else list(outputs)
    for nid in inputs + outputs:
        if nid not in graph.nodes and nid not in graph.inputs:
            raise IRError(f"no node {nid} in the graph")
    return IRModule(graph, inputs, outputs)
