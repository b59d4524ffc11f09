"""The reference mask selection (numpy), and THE tie-break rule every framework must reproduce.

The rule: within a group, entries are ranked by score ascending with a *stable* order (on equal
scores the lower flat index comes first), and the first ``count`` are pruned. Entries pruned before
(the ``prior`` mask) score -1, below any magnitude, so masks only lose entries: a zero never comes
back. Scores are ``|w|`` per element, or the sum of squares per block (the L2 norm ranks the same),
computed in float64 for blocks so that summation order cannot flip a near tie between frameworks.
"""

import math

import numpy as np

from prunekit.core.patterns import Layout

__all__ = ["prune_count", "reference_mask", "reference_global_masks", "to_scores", "from_groups", "block_sums"]


def prune_count(sparsity, n):
    """Entries to prune for ``sparsity`` over ``n``: ``round(sparsity * n)``, halves rounded up.

    >>> prune_count(0.95, 100), prune_count(0.5, 3), prune_count(0.0, 7)
    (95, 2, 0)
    """
    return min(n, int(math.floor(sparsity * n + 0.5)))


def _score_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def to_scores(weight, layout: Layout):
    """Score matrix ``(groups, group_size)`` of a canonical weight following ``layout``."""
    w = np.asarray(weight)
    x = np.transpose(w, layout.perm)
    if layout.block is not None:
        r, c = layout.block
        rows, cols = x.shape[-2], x.shape[-1]
        x = block_sums(np.square(x.astype(np.float64).reshape(-1, rows // r, r, cols // c, c)))
    else:
        x = np.abs(x.astype(_score_dtype(w.dtype)))
    size = layout.group_size or x.size
    return x.reshape(-1, size)


def block_sums(squares):
    """Sum ``(..., R, r, C, c)`` over the ``r`` and ``c`` axes in THE order every implementation uses: the
    ``r`` rows of each block column one after another, then the ``c`` column sums one after another.

    Floating-point addition is not associative; numpy's and torch's reductions pick their own orders
    (pairwise, vectorised), which differ in the last bit for blocks of mixed magnitudes and could flip
    a near tie. Written out in sequence, numpy, torch and the native C kernel add the same numbers in
    the same order and agree exactly.
    """
    acc = squares[:, :, 0]
    for a in range(1, squares.shape[2]):
        acc = acc + squares[:, :, a]
    total = acc[..., 0]
    for b in range(1, acc.shape[-1]):
        total = total + acc[..., b]
    return total


def from_groups(groups, layout: Layout, shape):
    """Inverse of :func:`to_scores` for a boolean matrix: back to a canonical ``shape``."""
    permuted = tuple(shape[i] for i in layout.perm)
    m = np.asarray(groups)
    if layout.block is not None:
        r, c = layout.block
        rows, cols = permuted[-2], permuted[-1]
        m = m.reshape(-1, rows // r, 1, cols // c, 1)
        m = np.broadcast_to(m, (m.shape[0], rows // r, r, cols // c, c))
    m = m.reshape(permuted)
    return np.transpose(m, np.argsort(layout.perm))


def _select(scores, count, prior_groups):
    """Pruned (True) entries of each row: the ``count`` lowest scores, ties to the lower index."""
    scores = scores.copy()
    if prior_groups is not None:
        pruned_before = ~prior_groups
        scores[pruned_before] = -1.0
        counts = np.maximum(count, pruned_before.sum(axis=1))
    else:
        counts = np.full(scores.shape[0], count)
    order = np.argsort(scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks < counts[:, None]


def _prior_groups(prior, layout):
    # True where a group entry (element or block) still has a kept element; a block counts as
    # pruned before only when none of its entries was kept
    if prior is None:
        return None
    return to_scores(np.asarray(prior, dtype=np.float32), layout) > 0


def reference_mask(weight, sparsity, pattern, prior=None):
    """The mask (True = kept) of one tensor at ``sparsity`` under ``pattern``.

    Args:
        weight: canonical-layout array.
        sparsity: requested sparsity in [0, 1); each group prunes ``round(sparsity * size)``.
        pattern: a per-tensor pattern (``Global`` tensors go through :func:`reference_global_masks`).
        prior: the current mask, or ``None``; its zeros stay zeros.

    >>> from prunekit.core.patterns import Unstructured
    >>> reference_mask(np.array([[3., 1., 1., 2.]]), 0.5, Unstructured()).astype(int).tolist()
    [[1, 0, 0, 1]]
    """
    w = np.asarray(weight)
    layout = pattern.layout(w.shape)
    scores = to_scores(w, layout)
    count = prune_count(sparsity, scores.shape[1])
    pruned = _select(scores, count, _prior_groups(prior, layout))
    mask = ~from_groups(pruned, layout, w.shape)
    if prior is not None:
        mask &= np.asarray(prior, dtype=bool)
    return np.ascontiguousarray(mask)


def reference_global_masks(weights, sparsity, priors=None):
    """Masks of several tensors sharing one threshold: ``round(sparsity * total)`` pruned overall.

    Ties across tensors go to the lower index of the concatenation in the given order.
    """
    arrays = [np.asarray(w) for w in weights]
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
    scores = np.concatenate([np.abs(a.astype(dtype)).ravel() for a in arrays])[None, :]
    prior = None
    if priors is not None:
        prior = np.concatenate([np.asarray(p, dtype=bool).ravel() for p in priors])[None, :]
    pruned = _select(scores, prune_count(sparsity, scores.shape[1]), prior)[0]
    masks, start = [], 0
    for a in arrays:
        masks.append(~pruned[start:start + a.size].reshape(a.shape))
        start += a.size
    return masks
