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


_HIGH, _LOW = 1 << 15, 1 << 16  # a key's top 15 bits and its low 16


def _keys(scores):
    """Int32 keys that order as the float32 ``scores`` (0.0 and up, or -1.0 for entries pruned before):
    -1.0 becomes 0, every other score the bits of its float plus 1 (non-negative floats' bits order as
    the floats do)."""
    bits = ops.view(scores, "int32")
    return ops.where(ops.less(scores, 0.0), 0, ops.add(bits, 1))


def _first_reaching(counts, rank):
    """The first index of the 1-D histogram ``counts`` whose running total reaches ``rank``, and the total
    before it."""
    total = ops.cumsum(counts)
    at = ops.cast(ops.argmax(ops.cast(ops.greater_equal(total, rank), "int32")), "int32")
    return at, ops.take(total, at) - ops.take(counts, at)


def _histogram(values, bins):
    """How many of the int32 ``values`` (each in ``[0, bins)``) equal each of ``0 .. bins - 1``. TensorFlow:
    the ``DenseBincount`` op with a constant size, which XLA compiles (``tf.math.bincount`` and keras'
    ``bincount`` compute the size from the values); 5x faster there than a segment sum."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.raw_ops.DenseBincount(input=values, size=bins, weights=tf.zeros([0], tf.int32))
    return ops.cast(ops.bincount(values, minlength=bins), "int32")


def _kth_key(keys, k):
    """The ``k``-th smallest (1-based, ``1 <= k``) of the int32 keys of one row: two radix rounds (a histogram
    of the top 15 bits, then of the low 16 bits inside the bin that holds it) instead of a sort."""
    high = ops.right_shift(keys, 16)
    bin_, before = _first_reaching(_histogram(high, _HIGH), k)
    inside = ops.where(ops.equal(high, bin_), ops.bitwise_and(keys, _LOW - 1), _LOW)  # others: one bin past
    low, _ = _first_reaching(_histogram(inside, _LOW + 1)[:_LOW], k - before)
    return ops.bitwise_or(ops.left_shift(bin_, 16), low)


def select(scores, counts):
    """Pruned (True) entries of each row: the ``counts[row]`` lowest scores, ties to the lower index.

    The ``k``-th smallest score of a row comes from a sort, or, for one float32 row (unstructured tensors, a
    global set), from :func:`_kth_key`'s two radix rounds over int32 keys: a few passes instead of a sort
    of millions (a 4.2M-weight event took ~300 ms with the sort)."""
    k = ops.reshape(ops.cast(counts, "int32"), (-1, 1))
    if scores.shape[0] == 1 and keras.backend.standardize_dtype(scores.dtype) == "float32":
        keys = _keys(scores)
        kth = ops.reshape(_kth_key(ops.reshape(keys, (-1,)), ops.maximum(k[0, 0], 1)), (1, 1))
        scores = keys
    else:
        ordered = ops.sort(scores, axis=-1)
        kth = ops.take_along_axis(ordered, ops.maximum(k - 1, 0), axis=1)
    below = ops.less(scores, kth)
    n_below = ops.sum(ops.cast(below, "int32"), axis=1, keepdims=True)
    tied = ops.equal(scores, kth)
    n_tied = ops.sum(ops.cast(tied, "int32"), axis=1, keepdims=True)

    def first_ties():  # of the tied entries of a row, the first k - n_below by index
        tie_rank = ops.cumsum(ops.cast(tied, "int32"), axis=1)  # 1 for the first tied entry of a row
        return ops.logical_and(tied, ops.less_equal(tie_rank, k - n_below))

    # usually every tied entry goes (one, for continuous weights): no running count over the whole row
    goes = ops.cond(ops.all(ops.equal(n_tied, k - n_below)), lambda: tied, first_ties)
    pruned = ops.logical_or(below, goes)
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
