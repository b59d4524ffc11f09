"""The step of the methods that let pruned entries regrow: ``method="feedback"`` and ``method="sr-ste"``.

* feedback: dynamic pruning with feedback (Lin et al., "Dynamic Model Pruning with Feedback", ICLR 2020,
  https://arxiv.org/abs/2006.07253). The optimizer keeps the dense weights in its state
  (``optimizer.state[p]["prunekit_dense"]``, 4 bytes per float32 parameter of a pruned tensor); the model
  holds the masked weights, so the forward and backward passes see the sparse model; the gradients
  computed there (pruned entries' included: they are not masked at backward) update the dense weights
  with the base optimizer's own update; masks are re-selected from the dense weights, without the
  previous mask as a prior, at every prune event, so an entry pruned too early comes back.
* sr-ste: sparse-refined straight-through estimation (Zhou et al., "Learning N:M Fine-grained Structured
  Sparse Neural Networks From Scratch", ICLR 2021, https://arxiv.org/abs/2102.04010): feedback plus
  ``sr_ste_decay * (1 - mask) * dense`` added to the gradient of the dense weights, which pulls the pruned
  entries toward 0 so that the mask settles.

One step (after the model's ``backward()`` at the masked weights):

1. the dense weights go back into the parameters: kept entries from the parameter (so an edit of the
   model's weights outside the optimizer is kept), pruned entries from the dense copy;
2. ``restore_sparsity`` on the first step; a prune event when the schedule has one, selecting from the
   dense weights (exact counts and every pattern, as magnitude pruning);
3. SR-STE's decay and L1, then the base optimizer's own step on the dense weights (its state, momentum
   or Adam's moments, is the dense weights' state: it is never zeroed by an event);
4. the result is copied into the dense copy and the parameter's pruned entries are set to exactly 0.0.

The schedule is magnitude pruning's: events at the same steps, to the same sparsity; after the last event
the masks stay fixed (the fine-tune phase trains the kept entries of a fixed sparse model). With
``fix_sparsity=True`` nothing could regrow, so the configuration's ``regrows`` is False and the step is
magnitude pruning's (:class:`prunekit.core.PruneConfig`). Before the first event the step is the base
step alone; with target 0 the optimizer is its base optimizer, bit for bit.
"""

import torch

from prunekit.errors import PruningRuntimeError
from prunekit.torch import _select
from prunekit.torch.engine import zero_pruned_

__all__ = ["regrowing_step"]


def _to_dense(engine, masks):
    """Step 1: parameters = kept entries from the model, pruned entries from the dense copy."""
    store = engine._store
    for spec, p in engine._specs:
        mask = masks.get(spec.name)
        if mask is None:
            continue
        dense = store.dense(spec.name)
        p.copy_(torch.where(mask, p, dense))


def _restore(engine):
    """``restore_sparsity``: masks = ``weight != 0``; the restored zeros are where the dense weights start."""
    masks, restored = {}, {}
    for spec, p in engine._specs:
        masks[spec.name] = p.detach() != 0
        restored[spec.name] = 1.0 - int(masks[spec.name].sum()) / max(1, p.numel())
    engine._store.put(masks=masks, restored=restored)
    engine._masks = None


def _event(engine):
    """Masks re-selected from the (dense) parameters with no prior: any entry may come back."""
    step, restored = engine.step_count, engine._store.restored()
    new, global_specs = {}, []
    for spec, p in engine._specs:
        if spec.pattern.is_global:
            global_specs.append((spec, p))
            continue
        sparsity = engine._decide.sparsity_at(step, [spec.name], restored)
        try:
            new[spec.name] = _select.tensor_mask(p, sparsity, spec.pattern)
        except _select.NonFiniteWeights:
            raise engine._non_finite([spec.name]) from None
    if global_specs:
        names = [s.name for s, _ in global_specs]
        sparsity = engine._decide.sparsity_at(step, names, restored)
        try:
            masks = _select.global_masks([p for _, p in global_specs], sparsity)
        except _select.NonFiniteWeights:
            raise engine._non_finite(names) from None
        new.update(zip(names, masks))
    engine._store.put(masks=new)
    engine._masks = None


def _sr_ste_decay(engine, masks, grad_scale):
    """``grad += decay * (1 - mask) * dense`` (times the GradScaler's scale when the step unscales)."""
    decay = engine.config.sr_ste_decay
    if decay == 0.0:
        return
    for spec, p in engine._specs:
        mask, grad = masks.get(spec.name), p.grad
        if mask is None or grad is None:
            continue
        if grad.is_sparse:
            raise PruningRuntimeError(f"method='sr-ste' needs dense gradients; {spec.name!r} has a sparse one "
                                      "(an Embedding(sparse=True)?): use method='feedback' or dense gradients")
        pull = p.detach() * ~mask
        if grad_scale is not None:
            grad.add_(pull * (grad_scale * decay))
        else:
            grad.add_(pull, alpha=decay)


@torch.no_grad()
def regrowing_step(optimizer, closure=None):
    """One step of a regrowing method for a :class:`prunekit.torch.optimizers.SparseOptimizerMixin`."""
    engine = optimizer._prunekit
    loss = None
    if closure is not None:  # forward and backward at the model's (masked) weights
        with torch.enable_grad():
            loss = closure()
    before = engine.masks
    if before:
        _to_dense(engine, before)
    if engine.config.restore_sparsity and not before:
        _restore(engine)
    if engine._event_due():
        _event(engine)
    masks = engine.masks
    grad_scale = getattr(optimizer, "grad_scale", None)
    if masks:
        _sr_ste_decay(engine, masks, grad_scale)
    if engine.config.L1_regularization:
        engine.add_l1(grad_scale)
    optimizer._base_step()
    if masks:
        params, pmasks = [], []
        for spec, p in engine._specs:
            mask = masks.get(spec.name)
            if mask is None:
                continue
            engine._store.dense(spec.name).copy_(p)
            params.append(p)
            pmasks.append(mask)
        zero_pruned_(params, pmasks)
    engine.after_update(masked=True)
    return loss
