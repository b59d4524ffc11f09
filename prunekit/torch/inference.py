"""Sparse inference: replace Linear and Conv2d layers by sparse kernels where they measure faster.

``sparsify_for_inference(model, example_input)`` runs the model once to capture every layer's input,
then for each ``Linear`` and ``Conv2d`` (groups=1, zero padding) times the dense layer against each
sparse kernel that applies on that device, on that very input:

- ``scipy-csr`` (CPU): scipy's CSR matrix product (single-threaded; the fastest CPU kernel measured
  here for very sparse weights at small batch);
- ``torch-csr`` (CPU or CUDA): ``torch.sparse`` CSR with int32 indices;
- ``semi-structured`` (CUDA, 2:4 weights): ``torch.sparse.to_sparse_semi_structured``.

A convolution becomes a matrix product over ``unfold``-ed patches. A kernel replaces the dense layer
only when it is at least ``min_speedup`` times faster *and* its output equals the dense output within
``rtol`` (relative to the output's norm); otherwise the layer stays dense. The returned report says,
per layer, what was measured and chosen. Inference only: the new modules do not train.
"""

import copy
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["sparsify_for_inference", "SparseLinear", "SparseConv2d", "KERNELS"]

KERNELS = ("scipy-csr", "torch-csr", "semi-structured")


def _scipy_csr(weight2d):
    import scipy.sparse
    return scipy.sparse.csr_matrix(weight2d.detach().cpu().numpy())


class _SparseMatrix(nn.Module):
    """``W @ X`` for a fixed sparse ``W`` (out, k) and dense ``X`` (k, n), with one kernel."""

    def __init__(self, weight2d, kernel):
        super().__init__()
        self.kernel, self.shape = kernel, tuple(weight2d.shape)
        self.dtype, self.device = weight2d.dtype, weight2d.device
        if kernel == "scipy-csr":
            if weight2d.device.type != "cpu":
                raise ValueError("scipy-csr runs on the CPU only")
            self.csr = _scipy_csr(weight2d)
        elif kernel == "torch-csr":
            w = weight2d.detach()
            with warnings.catch_warnings():  # torch's notice that CSR is "in beta": ours to know, not the user's
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                crow_col = w.to_sparse_csr()
                # torch made these indices, so checking them once is cheap and says we opted in (no warning)
                self.register_buffer("w", torch.sparse_csr_tensor(crow_col.crow_indices().to(torch.int32),
                                                                  crow_col.col_indices().to(torch.int32),
                                                                  crow_col.values(), w.shape, check_invariants=True))
        elif kernel == "semi-structured":
            if weight2d.device.type != "cuda":
                raise ValueError("2:4 semi-structured kernels need CUDA")
            from torch.sparse import to_sparse_semi_structured
            self.w = to_sparse_semi_structured(weight2d.detach())
        else:
            raise ValueError(f"unknown kernel {kernel!r}; accepted: {', '.join(KERNELS)}")

    def forward(self, x):  # x: (k, n) -> (out, n)
        if self.kernel == "scipy-csr":
            y = self.csr @ x.detach().cpu().numpy()
            return torch.from_numpy(np.ascontiguousarray(y, dtype=y.dtype)).to(x.device)
        if self.kernel == "torch-csr":
            return torch.sparse.mm(self.w, x)
        return torch.mm(self.w, x)


class SparseLinear(nn.Module):
    """A ``Linear`` whose weight is held by a sparse kernel (inference only)."""

    def __init__(self, linear, kernel):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.matrix = _SparseMatrix(linear.weight, kernel)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def kernel(self):
        return self.matrix.kernel

    def forward(self, x):
        lead = x.shape[:-1]
        y = self.matrix(x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """A ``Conv2d`` (groups=1, zero padding) computed as a sparse matrix times unfolded patches."""

    def __init__(self, conv, kernel):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only groups=1, numeric zero padding")
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.matrix = _SparseMatrix(conv.weight.reshape(conv.out_channels, -1), kernel)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @property
    def kernel(self):
        return self.matrix.kernel

    def forward(self, x):
        b, _, h, w = x.shape
        cols = nn.functional.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, CKK, L)
        k, length = cols.shape[1], cols.shape[2]
        y = self.matrix(cols.permute(1, 0, 2).reshape(k, b * length))  # (out, B*L)
        y = y.reshape(self.out_channels, b, length).permute(1, 0, 2)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1)
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return y.reshape(b, self.out_channels, out_h, out_w)


def _time_ms(fn, min_runs=5, min_seconds=0.05):
    t0 = time.perf_counter()
    fn()
    if time.perf_counter() - t0 > 0.2:  # a slow layer (large batch): three runs tell it apart well enough
        min_runs = 3
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times) * 1e3


def _capture_inputs(model, example_input):
    inputs, hooks = {}, []

    def keep(name):
        def hook(module, args, output):  # returns None: a forward hook's value would replace the output
            inputs.setdefault(name, args[0].detach())
        return hook
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(keep(name)))
    try:
        model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _candidates(module, kernels):
    wrap = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
    device = module.weight.device
    for kernel in kernels:
        if kernel == "scipy-csr" and device.type != "cpu":
            yield kernel, None, f"unavailable: scipy's CSR runs on the CPU (the weight is on {device.type})"
            continue
        if kernel == "semi-structured" and device.type != "cuda":
            yield kernel, None, f"unavailable: 2:4 semi-structured kernels need CUDA (the weight is on {device.type})"
            continue
        try:
            yield kernel, wrap(module, kernel), None
        except Exception as e:  # a kernel that cannot hold this weight is reported, not fatal
            yield kernel, None, f"{type(e).__name__}: {e}"


def _set_module(model, name, new):
    parent = model
    *path, last = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, new)


@torch.no_grad()
def sparsify_for_inference(model, example_input, kernels=KERNELS, min_speedup=1.1, rtol=1e-5, timer=_time_ms):
    """A copy of ``model`` (eval mode) whose layers use sparse kernels where measured faster.

    Args:
        model: the (pruned) model; it is not modified.
        example_input: a tensor (or tuple) of the shape inference will use: the choice depends on it.
        kernels: kernels to try (see :data:`KERNELS`).
        min_speedup: a kernel must beat the dense layer by this factor to be used.
        rtol: largest accepted ``||sparse - dense|| / ||dense||`` of a layer's output.
        timer: ``timer(fn) -> ms`` (the default takes the median of repeated runs).

    Returns:
        ``(sparse_model, report)``; ``report`` is a list of dicts, one per Linear/Conv2d:
        name, type, density, dense_ms, candidates ({kernel: ms or error}), chosen ("dense" or a kernel).
    """
    model = copy.deepcopy(model).eval()
    inputs = _capture_inputs(model, example_input)
    report = []
    for name, module in list(model.named_modules()):
        if name not in inputs:
            continue
        x = inputs[name]
        density = float((module.weight != 0).sum()) / module.weight.numel()
        dense_out = module(x)
        row = {"name": name, "type": type(module).__name__, "density": density,
               "dense_ms": timer(lambda: module(x)), "candidates": {}, "chosen": "dense"}
        best = None
        for kernel, candidate, error in _candidates(module, kernels):
            if candidate is None:
                row["candidates"][kernel] = error
                continue
            try:
                out = candidate(x)
            except Exception as e:
                row["candidates"][kernel] = f"{type(e).__name__}: {e}"
                continue
            err = float((out - dense_out).norm() / dense_out.norm().clamp_min(1e-30))
            if err > rtol:
                row["candidates"][kernel] = f"output differs from dense by {err:.2e} (relative norm)"
                continue
            ms = timer(lambda c=candidate: c(x))
            row["candidates"][kernel] = ms
            if ms * min_speedup <= row["dense_ms"] and (best is None or ms < best[0]):
                best = (ms, kernel, candidate)
        if best is not None:
            row["chosen"] = best[1]
            if name == "":
                model = best[2]  # the model is itself one layer
            else:
                _set_module(model, name, best[2])
        report.append(row)
    return model, report
