"""The core's pruning decisions for one optimizer: which steps are events, what sparsity each aims at,
and (with numpy, on the host) the masks. Every adapter takes its decisions from here; the torch
adapter computes the masks themselves on the parameters' devices instead.

The Keras, TF1 and MXNet adapters keep masks in their framework's optimizer state and apply them with their own ops on
every step; only at a prune event do they hand the current weights (in the canonical layout) to
:class:`HostPruner`, which returns the new masks from the reference selection of
:mod:`prunekit.core.masks`. So every framework gets the reference answer, ties included, and the
schedule arithmetic (targets, restored sparsity) is written once. The torch adapter computes the same
masks on the parameter's device instead (see ``prunekit/torch/_select.py``).
"""

import numpy as np

from prunekit.core.masks import reference_global_masks, reference_mask

__all__ = ["HostPruner", "initial_sparsity"]


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
            out[spec.name] = reference_mask(w, self.sparsity_at(step, [spec.name], restored), spec.pattern, prior)
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
        return reference_mask(w, self.sparsity_at(step, [name], restored or {}), spec.pattern, prior)

    @staticmethod
    def restore(weights):
        """Masks ``w != 0`` and the sparsity each tensor was restored with."""
        masks = {n: np.asarray(w) != 0 for n, w in weights.items()}
        return masks, {n: 1.0 - float(m.mean()) if m.size else 0.0 for n, m in masks.items()}
