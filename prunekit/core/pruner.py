"""The core's pruning decisions for one optimizer: which steps are events, what sparsity each aims at,
and (with numpy, on the host) the masks. Every adapter takes its decisions from here; the torch
adapter computes the masks themselves on the parameters' devices instead.

The Keras, TF1 and MXNet adapters keep masks in their framework's optimizer state and apply them with their own ops on
every step; only at a prune event do they hand the current weights (in the canonical layout) to
:class:`HostPruner`, which returns the new masks from the reference selection of
:mod:`prunekit.core.masks`. So every framework gets the reference answer, ties included, and the
schedule arithmetic (targets, restored sparsity) is written once. The torch adapter computes the same
masks on the parameter's device instead (see ``prunekit/torch/_select.py``).

Where :mod:`prunekit.core.native`'s kernels are available (x86-64 with AVX2 and a C compiler), large
float32 tensors with unstructured, N:M or bank-balanced patterns are decided by them: the same masks
(the kernels are tested against the reference), without the reference's sorts.
"""

import os

import numpy as np

from prunekit.core import native
from prunekit.core.masks import prune_count, reference_global_masks, reference_mask

__all__ = ["HostPruner", "initial_sparsity", "host_mask"]

_NATIVE_MIN_SIZE = 1 << 14  # below this the reference's sorts cost less than the call


def _native_mask(w, sparsity, pattern, prior):
    """The mask from the native kernels, or None when they do not take this tensor or hand it back."""
    if w.dtype != np.float32 or w.size < _NATIVE_MIN_SIZE or native.kernels() is None:
        return None
    layout = pattern.layout(tuple(w.shape))
    threads = max(1, min(2, os.cpu_count() or 1))
    out = np.empty(w.shape, np.uint8)
    prior8 = None if prior is None else np.ascontiguousarray(prior, dtype=np.uint8).reshape(w.shape)
    if layout.block is None and layout.group_size is None and layout.perm == tuple(range(w.ndim)):
        count = prune_count(sparsity, w.size)
        if not 0 < count < w.size:
            return None
        flat = np.ascontiguousarray(w).reshape(-1)
        decided = native.select_masks([flat], [count], None if prior8 is None else [prior8.reshape(-1)],
                                      [out.reshape(-1)], threads=threads)
    elif (layout.block is None and layout.group_size is not None and w.ndim >= 2
          and layout.perm == (0,) + tuple(range(2, w.ndim)) + (1,) and w.shape[1] % layout.group_size == 0):
        decided = native.group_masks([np.ascontiguousarray(w)], [layout.group_size],
                                     [prune_count(sparsity, layout.group_size)],
                                     None if prior8 is None else [prior8], [out], threads=threads)
    else:
        return None
    return out.astype(bool) if decided[0] else None


def host_mask(weight, sparsity, pattern, prior=None):
    """``reference_mask(weight, sparsity, pattern, prior)``, by the native kernels where they take it."""
    w = np.asarray(weight)
    mask = _native_mask(w, sparsity, pattern, prior)
    return reference_mask(w, sparsity, pattern, prior) if mask is None else mask


def initial_sparsity(config, restored, sizes):
    """``s_i`` of a set of tensors: the larger of ``init_sparsity`` and their restored sparsity."""
    total = sum(sizes.values())
    weighted = sum(restored.get(n, 0.0) * s for n, s in sizes.items()) / total if total else 0.0
    return max(config.init_sparsity, weighted)


class HostPruner:
    """The decisions of one optimizer's pruning: which steps are events, and the masks at an event.

    Args:
        plan: the resolved :class:`prunekit.core.Plan` (names and canonical shapes).
        config: the :class:`prunekit.core.PruneConfig`.
    """

    def __init__(self, plan, config):
        self.plan, self.config, self.schedule = plan, config, config.schedule
        self.sizes = {spec.name: spec.numel for spec in plan}

    def is_event(self, step, have_masks):
        """Whether masks are recomputed before the update at ``step``."""
        if self.config.fix_sparsity and have_masks:
            return False
        return self.schedule.is_event(int(step))

    def sparsity_at(self, step, names, restored):
        target = self.plan[names[0]].target
        return self.schedule.sparsity_at(int(step), initial_sparsity(self.config, restored,
                                                                     {n: self.sizes[n] for n in names}), target)

    def masks(self, step, weights, priors=None, restored=None):
        """New masks at an event.

        Args:
            step: the step about to run.
            weights: ``{name: canonical-layout array}`` for every planned tensor.
            priors: ``{name: bool array}`` of current masks, or None before the first event.
            restored: ``{name: sparsity}`` recorded by a restore, or None.

        Returns:
            ``{name: bool array}`` (True = kept), canonical layout.
        """
        restored = restored or {}
        out = {}
        global_names = [s.name for s in self.plan if s.pattern.is_global]
        for spec in self.plan:
            if spec.pattern.is_global:
                continue
            w = np.asarray(weights[spec.name])
            if not np.isfinite(w).all():
                raise ValueError(f"{spec.name!r} holds NaN or inf at step {step}; masks cannot be ranked")
            prior = None if priors is None else priors.get(spec.name)
            out[spec.name] = host_mask(w, self.sparsity_at(step, [spec.name], restored), spec.pattern, prior)
        if global_names:
            ws = [np.asarray(weights[n]) for n in global_names]
            prior = None if priors is None or any(priors.get(n) is None for n in global_names) else \
                [priors[n] for n in global_names]
            masks = reference_global_masks(ws, self.sparsity_at(step, global_names, restored), prior)
            out.update(zip(global_names, masks))
        return out

    def mask(self, name, step, weight, prior=None, restored=None):
        """The new mask of one tensor at an event (per-tensor patterns only)."""
        spec = self.plan[name]
        if spec.pattern.is_global:
            raise ValueError(f"{name!r} uses a Global pattern, whose masks need every tensor at once")
        w = np.asarray(weight)
        if not np.isfinite(w).all():
            raise ValueError(f"{name!r} holds NaN or inf at step {step}; masks cannot be ranked")
        return host_mask(w, self.sparsity_at(step, [name], restored or {}), spec.pattern, prior)

    @staticmethod
    def restore(weights):
        """Masks ``w != 0`` and the sparsity each tensor was restored with."""
        masks = {n: np.asarray(w) != 0 for n, w in weights.items()}
        return masks, {n: 1.0 - float(m.mean()) if m.size else 0.0 for n, m in masks.items()}
