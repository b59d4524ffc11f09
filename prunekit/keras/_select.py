"""Prune-event masks with ``keras.ops``: the reference selection of :mod:`prunekit.core.masks`, in-graph.

Everything here is a pure function of tensors and of plain data taken from the core (a pattern's
:class:`~prunekit.core.patterns.Layout`, the schedule's event steps), so a prune event traces into the
training step: no host round trip, and it compiles under XLA (``jit_compile=True``).

Tie-break without a stable sort (``keras.ops.argsort`` promises none): in each group, let ``v`` be the
``k``-th smallest score (a plain value sort). Every entry scoring below ``v`` is pruned, and of the
entries scoring exactly ``v`` the first ``k - #below`` by index (a running count along the row). That is
exactly "rank by (score, index), prune ranks below k", the reference rule.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["group_scores", "ungroup", "select", "prune_counts", "schedule_factors"]


def _float_dtype(dtype):
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def group_scores(x, layout):
    """Score matrix ``(groups, group_size)`` of a canonical-layout tensor (see ``core.masks.to_scores``)."""
    x = ops.transpose(x, layout.perm)
    shape = tuple(x.shape)
    if layout.block is not None:
        r, c = layout.block
        rows, cols = shape[-2], shape[-1]
        x = ops.reshape(ops.cast(x, "float64"), (-1, rows // r, r, cols // c, c))
        x = ops.sum(ops.square(x), axis=(2, 4))
    else:
        x = ops.abs(ops.cast(x, _float_dtype(x.dtype)))
    size = layout.group_size or int(np.prod(tuple(x.shape)))
    return ops.reshape(x, (-1, size))


def ungroup(groups, layout, shape):
    """A boolean group matrix back to the canonical ``shape`` (inverse of :func:`group_scores`)."""
    permuted = tuple(shape[i] for i in layout.perm)
    m = groups
    if layout.block is not None:
        r, c = layout.block
        rows, cols = permuted[-2], permuted[-1]
        m = ops.reshape(m, (-1, rows // r, 1, cols // c, 1))
        m = ops.broadcast_to(m, (int(np.prod(permuted[:-2], dtype=np.int64)), rows // r, r, cols // c, c))
    m = ops.reshape(m, permuted)
    return ops.transpose(m, tuple(int(i) for i in np.argsort(layout.perm)))


def select(scores, counts):
    """Pruned (True) entries of each row: the ``counts[row]`` lowest scores, ties to the lower index."""
    k = ops.reshape(ops.cast(counts, "int32"), (-1, 1))
    ordered = ops.sort(scores, axis=-1)
    kth = ops.take_along_axis(ordered, ops.maximum(k - 1, 0), axis=1)
    below = ops.less(scores, kth)
    n_below = ops.sum(ops.cast(below, "int32"), axis=1, keepdims=True)
    tied = ops.equal(scores, kth)
    tie_rank = ops.cumsum(ops.cast(tied, "int32"), axis=1)  # 1 for the first tied entry of a row
    pruned = ops.logical_or(below, ops.logical_and(tied, ops.less_equal(tie_rank, k - n_below)))
    return ops.logical_and(pruned, ops.greater(k, 0))


def prune_counts(sparsity, size, pruned_before=None):
    """``round(s * size)`` with halves up (``core.masks.prune_count``), per row at least what was pruned before.

    ``sparsity`` is a float64 scalar tensor; ``pruned_before`` an int32 ``(groups,)`` tensor or None.
    """
    count = ops.minimum(ops.floor(ops.add(ops.multiply(sparsity, float(size)), 0.5)), float(size))
    count = ops.cast(count, "int32")
    if pruned_before is None:
        return ops.reshape(count, (1,))
    return ops.maximum(count, pruned_before)


def schedule_factors(schedule):
    """``(events, factors)``: the event steps and, for each, ``(1 - progress) ** exponent`` as Python computes
    it in ``Schedule.sparsity_at`` (0 at and after the last event), so the in-graph sparsity
    ``final + (initial - final) * factor`` is the core's number, bit for bit."""
    events = schedule.events()
    factors = []
    for t in events:
        if schedule.sparse_step == 0 or t >= schedule.last_event:
            factors.append(0.0)
        else:
            progress = max(0.0, (t - schedule.pretrain_step) / schedule.sparse_step)
            factors.append((1.0 - progress) ** schedule.exponent)
    return np.array(events, dtype=np.int64), np.array(factors, dtype=np.float64)
