"""Opt-in compiled paths for ``SGDSparse`` / ``AdamSparse`` / ``AdamWSparse(..., compile_step=True)``: the
update and the mask in one kernel, and prune events as a few fused passes.

Eager PyTorch cannot zero the pruned entries without one more pass over the parameters, which costs
about a third of an SGD step on a CPU (``benchmarks/mask_kernels.py``). Here torch's own functional
``sgd`` / ``adam`` (so every option keeps torch's math) and the masks are compiled together with
``torch.compile``; inductor fuses them. The learning rate goes in as a 0-d tensor kept in step with
``group["lr"]``, so LR schedulers do not trigger recompiles.

The same step also zeroes the optimizer state (momentum, moments) of pruned entries, so a prune event
before it need not touch the weights or the state: with ``compile_step=True`` an event only computes masks
(:class:`CompiledPruneEvent`: a sampling pass, a counting pass and a threshold pass over the weights)
and this step applies them.

A step falls back to the eager path (base ``step()`` then masking) whenever the compiled one does not
apply: before the optimizer state exists (torch creates it on the first step), with sparse, complex or
missing gradients, ``differentiable``, ``fused`` or ``capturable`` groups, or a GradScaler that unscales
inside the optimizer. Compiling takes seconds to tens of seconds and
needs a C++ toolchain for inductor on CPU.
"""

import logging

import numpy as np
import torch
from torch.optim.adam import adam as _functional_adam
from torch.optim.sgd import sgd as _functional_sgd

from prunekit.core import native
from prunekit.core.masks import prune_count

__all__ = ["CompiledSGDStep", "CompiledAdamStep", "CompiledPruneEvent"]

_log = logging.getLogger("prunekit")
_announced = set()


def _no_cuda_runtime_notice(record):
    # torch.utils.cpp_extension (imported by inductor) logs this on every CPU-only machine with a CUDA
    # build of torch; compiling for the CPU does not need a CUDA runtime, so it is noise here
    return not record.getMessage().startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_runtime_notice)


class _Compiled:
    """``torch.compile(fn)`` that says once per process, at its first call, that the pause is compilation
    (a logging message on the ``prunekit`` logger: shown on stderr unless logging is configured otherwise)."""

    def __init__(self, fn, what, **options):
        self._fn, self._what = torch.compile(fn, dynamic=False, **options), what

    def __call__(self, *args, **kwargs):
        if self._what not in _announced:
            _announced.add(self._what)
            _log.warning("prunekit: compiling %s with torch.compile (a pause once per process; inductor caches "
                         "the kernels for next time)", self._what)
        return self._fn(*args, **kwargs)


def _masked_sgd(params, grads, bufs, masks, lr, weight_decay, momentum, dampening, nesterov, maximize):
    _functional_sgd(params, grads, bufs, weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=dampening,
                    nesterov=nesterov, maximize=maximize, foreach=True)
    for p, buf, m in zip(params, bufs, masks):  # masks: uint8 (see "prune events" below for why not bool)
        kept = m.to(p.dtype) > 0.5
        p.copy_(torch.where(kept, p, 0.0))
        if buf is not None:  # pruned entries' momentum stays 0 (also what a prune event left to this step)
            buf.copy_(torch.where(kept, buf, 0.0))


def _masked_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, masks, lr, *, amsgrad,
                 beta1, beta2, weight_decay, eps, maximize, decoupled_weight_decay):
    # capturable: the tensor-valued math path, which takes the 0-d lr (torch's own choice under compile)
    _functional_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, foreach=True,
                     capturable=True, amsgrad=amsgrad, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay,
                     eps=eps, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
    for i, (p, m) in enumerate(zip(params, masks)):
        kept = m.to(p.dtype) > 0.5
        p.copy_(torch.where(kept, p, 0.0))
        exp_avgs[i].copy_(torch.where(kept, exp_avgs[i], 0.0))
        exp_avg_sqs[i].copy_(torch.where(kept, exp_avg_sqs[i], 0.0))
        if amsgrad:
            max_exp_avg_sqs[i].copy_(torch.where(kept, max_exp_avg_sqs[i], 0.0))


class _CompiledStep:
    """One optimizer step through a compiled function that also applies the masks; see the module doc.

    Subclasses split a param group into the tensors with masks (compiled) and without (torch's own
    functional update, eager), or return None when the group needs the eager path as a whole.
    """

    def __init__(self, fn):
        self._fn = _Compiled(fn, "the pruning step")
        self._lr = {}
        self.fused_steps = 0  # steps that took the compiled path

    def _lr_tensor(self, index, group, device):
        lr = group["lr"]
        if torch.is_tensor(lr):
            return lr
        t = self._lr.get((index, device))
        if t is None:
            t = self._lr[(index, device)] = torch.tensor(0.0, dtype=torch.float32, device=device)
        t.fill_(lr)
        return t

    @torch.no_grad()
    def __call__(self, optimizer, masks):
        """Step every group; False (nothing done) when a group needs the eager path."""
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return False
        plans = []
        for index, group in enumerate(optimizer.param_groups):
            if group.get("differentiable") or group.get("fused") or group.get("capturable"):
                return False
            split = self._split(optimizer, group, masks)
            if split is None:
                return False
            plans.append((index, group, split))
        for index, group, (fused, eager) in plans:
            lr = self._lr_tensor(index, group, fused[0][0].device) if fused[0] else None
            self._run(group, fused, eager, lr)
        self.fused_steps += 1
        return True

    @staticmethod
    def _stepping(group, masks):
        """``[(p, mask or None)]`` for the parameters of ``group`` that step here; None when the whole
        step must be eager (a masked parameter without a gradient: the eager path masks it, and what an
        event left; a sparse gradient; a complex parameter)."""
        out = []
        for p in group["params"]:
            if p.grad is None:
                if p in masks:
                    return None
                continue
            if p.grad.is_sparse or torch.is_complex(p) or type(p) not in (torch.nn.Parameter, torch.Tensor):
                # a tensor subclass (FSDP2's DTensor): the eager path
                return None
            out.append((p, masks.get(p)))
        return out


class CompiledSGDStep(_CompiledStep):
    """Runs one SGD step for an ``SGDSparse`` optimizer, fused with its masks; see the module doc."""

    def __init__(self):
        super().__init__(_masked_sgd)

    def _split(self, optimizer, group, masks):
        fused, eager = ([], [], [], []), ([], [], [])
        stepping = self._stepping(group, masks)
        if stepping is None:
            return None
        for p, mask in stepping:
            buf = optimizer.state[p].get("momentum_buffer") if group["momentum"] != 0 else None
            if group["momentum"] != 0 and buf is None:
                return None  # torch's first step clones the gradient into the buffer: leave it to eager
            target = fused if mask is not None else eager
            target[0].append(p)
            target[1].append(p.grad)
            target[2].append(buf)
            if mask is not None:
                fused[3].append(mask.view(torch.uint8))
        return fused, eager

    def _run(self, group, fused, eager, lr):
        hyper = dict(weight_decay=group["weight_decay"], momentum=group["momentum"], dampening=group["dampening"],
                     nesterov=group["nesterov"], maximize=group["maximize"])
        if fused[0]:
            self._fn(*fused, lr, **hyper)
        if eager[0]:
            _functional_sgd(*eager, lr=group["lr"], foreach=group["foreach"], **hyper)


class CompiledAdamStep(_CompiledStep):
    """Runs one Adam / AdamW step for ``AdamSparse`` / ``AdamWSparse``, fused with its masks.

    The moments of pruned entries are kept at 0 as the weights are. torch's functional ``adam`` runs in
    its tensor-valued ("capturable") form, so the learning rate is a 0-d tensor and schedulers do not
    recompile; its rounding differs from the eager form in the last bits.
    """

    def __init__(self):
        super().__init__(_masked_adam)

    def _split(self, optimizer, group, masks):
        fused, eager = ([], [], [], [], [], [], []), ([], [], [], [], [], [])
        stepping = self._stepping(group, masks)
        if stepping is None:
            return None
        for p, mask in stepping:
            state = optimizer.state[p]
            if "exp_avg" not in state or (group["amsgrad"] and "max_exp_avg_sq" not in state):
                return None  # torch creates the state on a parameter's first step: leave that to eager
            target = fused if mask is not None else eager
            target[0].append(p)
            target[1].append(p.grad)
            target[2].append(state["exp_avg"])
            target[3].append(state["exp_avg_sq"])
            if group["amsgrad"]:
                target[4].append(state["max_exp_avg_sq"])
            target[5].append(state["step"])
            if mask is not None:
                fused[6].append(mask.view(torch.uint8))
        return fused, eager

    def _run(self, group, fused, eager, lr):
        beta1, beta2 = group["betas"]
        hyper = dict(amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                     eps=group["eps"], maximize=group["maximize"],
                     decoupled_weight_decay=group.get("decoupled_weight_decay", False))
        if fused[0]:
            self._fn(*fused, lr, **hyper)
        if eager[0]:
            _functional_adam(*eager, lr=group["lr"], foreach=group["foreach"], **hyper)


# -- prune events ---------------------------------------------------------------------------------------
# Inductor on CPU vectorizes these passes only when no bool tensor is loaded and no condition comes from
# an integer comparison: masks go in and out as uint8 and are compared as floats, and ``where(c, 1, 0)``
# stands for ``c``. Measured on 2.4M floats: 0.1 ms written so, 4-5 ms with bool masks. Every tensor of
# the plan goes through one compiled call per pass, because a call costs ~0.1 ms whatever its size.

def _event_sample(weights, stride):
    """Every ``stride``-th ``|w|`` of every tensor, as float32 bits, concatenated."""
    return torch.cat([w[::stride].abs().view(torch.int32) for w in weights])


def _event_counts(weights, lows, highs, priors, flag_dtype):
    """All tensors' one-byte flags of ``low <= |w| <= high`` (nonzero inside), concatenated; and per tensor
    one packed count: ``(below low) + 2**32 * (NaN, inf, or pruned before but not 0)`` (callers keep sizes
    under 2**30). ``flag_dtype``: float8 on CPU, where inductor concatenates uint8 only by a copy."""
    flags, counts = [], []
    for i, w in enumerate(weights):
        a = w.abs()
        low, high = lows[i], highs[i]
        flags.append(torch.where((a >= low) & (a <= high), 1.0, 0.0).to(flag_dtype))
        odd = (a > torch.finfo(a.dtype).max) | (a != a)
        if priors is not None:
            odd = odd | ((priors[i].to(a.dtype) < 0.5) & (a > 0))
        counts.append(torch.where(a < low, 1, torch.where(odd, 1 << 32, 0)).sum())
    return torch.cat(flags), torch.stack(counts)


def _event_masks(weights, thresholds, cuts, states, zero_weights, ties):
    """Per tensor: kept = ``|w| > t``, or ``== t`` at an index >= cut (the tie rule); ``t > 0``, so entries
    pruned before (0.0, checked by :func:`_event_counts`) stay pruned without reading the old mask.

    Zeroes the optimizer ``states`` (and the weights, if ``zero_weights``) where not kept, in place, to
    +0.0 as the eager path does.
    """
    kept_all, totals = [], []
    for i, w in enumerate(weights):
        a = w.abs()
        t = thresholds[i]
        if ties:  # the index test costs ~0.4 ns per entry: only compiled in when a tie straddles a cut
            index = torch.arange(a.numel(), device=a.device, dtype=torch.int32)
            kept = torch.where(a > t, 1.0, torch.where((a == t) & (index >= cuts[i]), 1.0, 0.0))
        else:
            kept = torch.where(a > t, 1.0, 0.0)
        for s in states[i]:
            s.copy_(torch.where(kept > 0.5, s, 0.0))
        if zero_weights:
            w.copy_(torch.where(kept > 0.5, w, 0.0))
        kept_all.append(kept.to(torch.uint8))
        totals.append(torch.where(kept > 0.5, 1, 0).sum())
    return kept_all, torch.stack(totals)


def _event_groups(weights, priors, counts, sizes):
    """N:M groups and banks of up to 8: per tensor, the uint8 mask that prunes ``counts[i]`` entries of every
    group of ``m`` consecutive input-axis entries (more where more were pruned before), the lowest first
    and ties at the lower index, as ``_select._kept_per_row``; and the count of non-finite entries.

    A weight ``(out, in, *spatial)`` is read as ``(out, in / m, m, spatial)``: the group's members are the
    ``m`` slices of the third axis, so every load is contiguous along the spatial axis and the mask comes
    out in the weight's own layout. Ranks come from pairwise comparisons of those slices (one pass)."""
    kept_all, odd = [], []
    for i, w in enumerate(weights):
        m = sizes[i]
        a = w.abs().reshape(w.shape[0], w.shape[1] // m, m, -1)
        members = [a[:, :, j] for j in range(m)]
        need = counts[i]
        if priors is not None:
            before = [priors[i].reshape(a.shape)[:, :, j].to(a.dtype) for j in range(m)]
            members = [torch.where(b > 0.5, x, -1.0) for b, x in zip(before, members)]  # pruned before: lowest
            need = torch.maximum(need, sum(1.0 - b for b in before))
        kept = []
        for j, x in enumerate(members):
            rank = sum(torch.where((y <= x) if k < j else (y < x), 1.0, 0.0) for k, y in enumerate(members) if k != j)
            kept.append(torch.where(rank >= need, 1.0, 0.0))
        kept_all.append(torch.stack(kept, 2).reshape(w.shape).to(torch.uint8))
        odd.append(torch.where(a <= torch.finfo(a.dtype).max, 0, 1).sum())
    return kept_all, torch.stack(odd)


class CompiledPruneEvent:
    """Masks of a whole plan from a few compiled passes (``compile_step=True``).

    Unstructured tensors (:meth:`__call__`) follow :mod:`prunekit.torch._select`'s fast path (a sampled
    key range, exact counts on each side of it, ranking inside it). On a CPU where
    :mod:`prunekit.core.native`'s kernels build (x86-64 with AVX2 and a C compiler) they make the three
    passes, one tensor per thread (about 2x faster than inductor here: a pass that collects the range's
    entries is not something inductor can generate, and ``nonzero`` over flags cost as much as the rest);
    elsewhere (CUDA, other CPUs) the passes over whole tensors are fused by inductor and made for all
    tensors in one call each: a sample, a pass that counts and flags the range, and one that applies the
    threshold and the tie rule and, unless the update will, zeroes the optimizer state and the weights.
    N:M groups and banks (:meth:`groups`) take one pass: native for any bank size, inductor for groups of
    up to 8; blocks (:meth:`blocks`) have their scores made natively. Tensors it does not take (small, not float32, not contiguous, some with a previous mask and some
    without) or cannot decide (an unlucky sample, a threshold among zeros, NaN, a pruned weight that is
    not 0) are left to the eager path, before anything is modified.
    """

    MIN_SIZE = 1 << 14
    MAX_SIZE = 1 << 30

    def __init__(self, inductor=True):
        #: whether passes that the native kernels do not make (CUDA, other CPUs) go through inductor; without
        #: it (the default optimizers) such tensors are left to the eager selection
        self.inductor = inductor
        if inductor:
            self._counts = _Compiled(_event_counts, "the prune event", fullgraph=True)
            self._masks = _Compiled(_event_masks, "the prune event", fullgraph=True)
            self._sample = _Compiled(_event_sample, "the prune event", fullgraph=True)
            self._groups = _Compiled(_event_groups, "the prune event", fullgraph=True)
        self.events = 0  # events that took the compiled path for at least one tensor
        self.native = True  # on CPU, prefer prunekit.core.native's kernels where they build (tests turn it off)
        self.native_events = 0  # calls (unstructured or grouped) decided by the native kernels

    def takes(self, weight, layout):
        """Whether a weight with this layout can go through the compiled passes for whole tensors."""
        return ((self.inductor or self._native_on(weight.device)) and layout.block is None and layout.group_size is None and layout.perm == tuple(range(weight.dim()))
                and weight.dtype == torch.float32 and weight.is_contiguous()
                and self.MIN_SIZE <= weight.numel() < self.MAX_SIZE)

    def _native_on(self, device):
        return device.type == "cpu" and self.native and native.kernels() is not None

    def takes_groups(self, weight, layout):
        """Whether a weight with this layout (N:M; banks: of up to 8, of any size with the native kernels)
        can go through :meth:`groups`."""
        return (layout.block is None and layout.group_size is not None
                and ((layout.group_size <= 8 and self.inductor) or self._native_on(weight.device))
                and weight.dim() >= 2 and layout.perm == (0,) + tuple(range(2, weight.dim())) + (1,)
                and weight.shape[1] % layout.group_size == 0
                and weight.dtype == torch.float32 and weight.is_contiguous() and self.MIN_SIZE <= weight.numel())

    @torch.no_grad()
    def groups(self, items):
        """``items``: ``[(weight, count per group, prior or None, layout)]``. Returns ``{index: mask}``.

        One compiled pass for all tensors; nothing is zeroed here (the caller's update or ``_install``
        does), and a tensor holding NaN or inf is left to the eager path, which reports it.
        """
        if not items:
            return {}
        priors = self._priors(items)
        if priors is False:
            return {}
        weights = [w.detach() for w, _, _, _ in items]
        if priors is not None:
            priors = [p.contiguous().view(torch.uint8) for p in priors]
        if self._native_on(weights[0].device):
            outs = [torch.empty(w.shape, dtype=torch.uint8) for w in weights]
            decided = native.group_masks([w.numpy() for w in weights], [layout.group_size for *_, layout in items],
                                         [c for _, c, _, _ in items], None if priors is None else [p.numpy() for p in priors],
                                         [o.numpy() for o in outs], threads=torch.get_num_threads())
            masks = {i: o.view(torch.bool) for i, (o, ok) in enumerate(zip(outs, decided)) if ok}
            if masks:
                self.events += 1
                self.native_events += 1
            return masks
        counts = torch.tensor([float(c) for _, c, _, _ in items], device=weights[0].device)
        masks, odd = self._groups(weights, priors, counts, [layout.group_size for _, _, _, layout in items])
        self.events += 1
        return {i: m.view(torch.bool) for i, (m, bad) in enumerate(zip(masks, odd.tolist())) if not bad}

    def takes_blocks(self, weight, layout):
        """Whether a weight with this layout (``Block(r, c)``) can go through :meth:`blocks` (native only)."""
        return (layout.block is not None and self._native_on(weight.device) and weight.dim() >= 2
                and layout.perm == tuple(range(2, weight.dim())) + (0, 1)
                and weight.shape[0] % layout.block[0] == 0 and weight.shape[1] % layout.block[1] == 0
                and weight.dtype == torch.float32 and weight.is_contiguous() and self.MIN_SIZE <= weight.numel())

    @torch.no_grad()
    def blocks(self, items):
        """``items``: ``[(weight, sparsity, prior or None, layout, (tensors to zero, tensors to zero that are
        0.0 wherever the prior prunes: only their newly pruned entries are written))]`` with ``Block`` layouts.
        Returns ``{index: mask}``. The native kernels score the blocks (the pass that dominated the eager
        event), select among the scores (as the eager selection ranks them), and expand the block decisions to
        the entry mask, zeroing the given tensors (float32, contiguous, the weight's size) where it is 0. A
        tensor holding NaN or inf is left to the eager path, which reports it, with nothing zeroed."""
        from prunekit.torch.engine import _native_zeroable, zero_pruned_

        if not items:
            return {}
        weights = [w.detach() for w, *_ in items]
        priors = [None if p is None else p.contiguous().view(torch.uint8).numpy() for _, _, p, _, _ in items]
        scored = native.block_scores([w.numpy() for w in weights], [layout.block for _, _, _, layout, _ in items],
                                     priors, threads=torch.get_num_threads())
        todo = [i for i, (scores, _) in enumerate(scored) if np.isfinite(scores).all()]
        if not todo:
            return {}
        chosen = dict(zip(todo, native.block_select([scored[i][0] for i in todo],
                                                    [prune_count(items[i][1], scored[i][0].size) for i in todo],
                                                    [scored[i][1] for i in todo], threads=torch.get_num_threads())))
        outs = {i: torch.empty(weights[i].shape, dtype=torch.uint8) for i in todo}
        inline, fresh, rest = [], [], []  # per tensor: what the expansion zeroes (all, or where newly pruned);
        for i in todo:  # what it cannot (another dtype)
            flags = outs[i].view(torch.bool)
            unknown, known = ([t.detach() for t in ts] for ts in items[i][4])
            if priors[i] is None:
                unknown, known = unknown + known, []
            inline.append([t for t in unknown if _native_zeroable(t, flags)])
            fresh.append([t for t in known if _native_zeroable(t, flags)])
            rest.extend((t, flags) for t in unknown + known if not _native_zeroable(t, flags))
        native.block_expand([chosen[i] for i in todo],
                            [items[i][3].block for i in todo], None if all(priors[i] is None for i in todo)
                            else [priors[i] if priors[i] is not None else np.ones(outs[i].numel(), np.uint8) for i in todo],
                            [outs[i].numpy() for i in todo], zero=[[t.numpy() for t in ts] for ts in inline],
                            threads=torch.get_num_threads(), fresh=[[t.numpy() for t in ts] for ts in fresh])
        for ts in inline + fresh:  # written behind autograd's back: let it know, as an in-place op would
            for t in ts:
                torch.autograd.graph.increment_version(t)
        if rest:
            zero_pruned_(*zip(*rest))
        self.events += 1
        self.native_events += 1
        return {i: outs[i].view(torch.bool) for i in todo}

    @staticmethod
    def _priors(items):
        """The previous masks of all items, None if none has one, False if only some do (then the eager
        path decides: one compiled graph takes either)."""
        priors = [item[2] for item in items]
        if all(p is None for p in priors):
            return None
        return priors if all(p is not None for p in priors) else False

    def _brackets(self, flats, counts):
        """Per tensor, float32 ``[low, high]`` that very likely holds its threshold (``_select._bracket``),
        from one compiled sampling pass over all tensors."""
        from prunekit.torch import _select

        stride = _select._SAMPLE_STRIDE
        samples = self._sample(flats, stride)
        bounds, start = [], 0
        for f, count in zip(flats, counts):
            size = -(-f.numel() // stride)
            bounds.append(_select._bracket(samples[start:start + size], f.numel(), count, 15))
            start += size
        bounds = torch.tensor(bounds, dtype=torch.int64).clamp(max=0x7F7FFFFF)  # at most the largest finite
        return bounds.to(device=flats[0].device, dtype=torch.int32).view(torch.float32)

    def _native(self, items, flats, priors, zero_weights):
        """:meth:`__call__` by :func:`prunekit.core.native.select_masks` (CPU), which zeroes the weights (if
        ``zero_weights``) and the state tensors in its mask pass."""
        from prunekit.torch.engine import _native_zeroable, zero_pruned_

        outs = [torch.empty(f.numel(), dtype=torch.uint8) for f in flats]
        inline, fresh, later = [], [], []  # per item: what the mask pass zeroes (all, or where newly pruned);
        for i, (w, _, _, states, known) in enumerate(items):  # what it cannot (another dtype)
            # with a prior, the scan checks that the weights are 0.0 wherever it prunes (else nothing is decided)
            weights = [w.detach()] if zero_weights else []
            tensors = ([] if priors is not None else weights) + [s.detach() for s in states]
            sure = ([] if priors is None else weights) + [s.detach() for s in known]
            usable = lambda t: _native_zeroable(t.view(-1), outs[i].view(torch.bool))  # noqa: E731
            inline.append([t for t in tensors if usable(t)])
            fresh.append([t for t in sure if usable(t)])
            later.append([t for t in tensors + sure if not usable(t)])
        decided = native.select_masks([f.numpy() for f in flats], [item[1] for item in items],
                                      None if priors is None else [p.numpy() for p in priors],
                                      [o.numpy() for o in outs], threads=torch.get_num_threads(),
                                      zero=[[t.view(-1).numpy() for t in ts] for ts in inline],
                                      fresh=None if priors is None else [[t.view(-1).numpy() for t in ts] for ts in fresh])
        masks = {i: outs[i].view(torch.bool).view(items[i][0].shape) for i, ok in enumerate(decided) if ok}
        tensors, tensor_masks = [], []
        for i, mask in masks.items():
            for t in inline[i] + fresh[i]:  # written behind autograd's back: let it know, as an in-place op would
                torch.autograd.graph.increment_version(t)
            tensors.extend(later[i])
            tensor_masks.extend([mask] * len(later[i]))
        if tensors:
            zero_pruned_(tensors, tensor_masks)
        if masks:
            self.events += 1
            self.native_events += 1
        return masks

    @torch.no_grad()
    def __call__(self, items, zero_weights=True):
        """``items``: ``[(weight, count, prior or None, [state tensors], [state tensors 0.0 wherever the prior
        prunes])]`` with ``0 < count < numel``.

        Returns ``{index into items: mask}`` for the tensors decided here; their states (and weights,
        if ``zero_weights``) are already zeroed where the mask is False (the native kernels write only the
        newly pruned entries of the second list; the inductor pass writes every pruned entry of both).
        """
        from prunekit.torch import _select

        if not items:
            return {}
        priors = self._priors(items)
        if priors is False:
            return {}
        if priors is not None:
            priors = [p.contiguous().view(-1).view(torch.uint8) for p in priors]
        flats = [item[0].detach().view(-1) for item in items]
        sizes = [f.numel() for f in flats]
        device = flats[0].device
        on_cpu = device.type == "cpu"
        if self._native_on(device):
            return self._native(items, flats, priors, zero_weights)
        keys = self._brackets(flats, [item[1] for item in items])
        flag_dtype = torch.float8_e4m3fn if on_cpu else torch.uint8
        flags, packed = self._counts(flats, keys[:, 0].contiguous(), keys[:, 1].contiguous(), priors, flag_dtype)
        inside = _select._true_positions(flags.view(torch.bool))
        starts = [0]
        for n in sizes:
            starts.append(starts[-1] + n)
        edges = torch.searchsorted(inside, torch.tensor(starts, dtype=inside.dtype, device=device)).tolist()
        if on_cpu:  # the band of each tensor is small: numpy ranks it with far less per-call cost
            inside = inside.numpy()
        chosen, thresholds, cuts = [], [], []
        for i, (packed_i, (_, count, *_)) in enumerate(zip(packed.tolist(), items)):
            below, odd = packed_i & 0xFFFFFFFF, packed_i >> 32
            in_band = edges[i + 1] - edges[i]
            if odd or not below < count <= below + in_band:
                continue  # the eager path decides (and raises on NaN / inf)
            positions = inside[edges[i]:edges[i + 1]] - starts[i]
            band = np.abs(flats[i].numpy()[positions]) if on_cpu else flats[i][positions].abs()
            threshold, staying_ties = _select._rank_band(band, positions, count - below)
            chosen.append(i)
            thresholds.append(float(threshold))
            # entries equal to the threshold stay from this index on (the tie rule), none if sizes[i]
            cuts.append(int(staying_ties[0]) if len(staying_ties) else sizes[i])
        if not chosen:
            return {}
        masks, totals = self._masks([flats[i] for i in chosen], torch.tensor(thresholds, dtype=torch.float32, device=device),
                                    torch.tensor(cuts, dtype=torch.int32, device=device),
                                    [[s.view(-1) for s in items[i][3] + items[i][4]] for i in chosen], zero_weights,
                                    any(cut != sizes[i] for i, cut in zip(chosen, cuts)))
        for i, total in zip(chosen, totals.tolist()):
            if total != sizes[i] - items[i][1]:
                raise RuntimeError(f"prunekit: compiled prune event kept {total} of {sizes[i]} entries, "
                                   f"expected {sizes[i] - items[i][1]} (please report this)")
        self.events += 1
        return {i: m.view(torch.bool).view(items[i][0].shape) for i, m in zip(chosen, masks)}
