"""Torch mask selection, on the parameter's own device, equal to ``prunekit.core.masks`` (ties included).

The reference ranks every group with a stable argsort. Here a group of many entries (a whole tensor,
unstructured or global) finds its threshold without sorting it. The bit pattern of a non-negative
float, read as an integer ("key"), orders the same way as the float, so:

* the fast path (groups of ``FAST_MIN`` entries or more) histograms the top bits of a 1-in-17 sample
  of the keys and takes from it a narrow key range that holds the threshold with a margin of 3.5
  binomial standard deviations. Two comparisons over all keys count the entries below and above the
  range; if the threshold's rank falls between them (checked, not assumed) only the entries inside
  (~1%) are gathered and ranked with ``kthvalue``. Every step is exact: the sample only decides how
  much work is needed. Entries pruned before are exactly 0.0 (the engine zeroes them every step),
  below every range; a final count proves it, and any surprise (a threshold among zeros, an unlucky
  sample, a pruned weight that is not zero) falls back to
* the exact path: a ``bincount`` of the top 16 bits of every key finds the bin holding the threshold,
  and ``kthvalue`` runs on that bin; entries pruned before get their own lowest bin.

``prunekit.torch.compiled.CompiledPruneEvent`` runs the fast path's passes over whole tensors as
fused kernels (``prunekit.core.native``'s C kernels on CPUs with AVX2, inductor's elsewhere). Groups of a few entries (banks, N:M) are ranked by pairwise comparison (up to 8) or a
stable sort per row. Timings:
``benchmarks/optimizer_overhead.py`` and docs/results.md.
"""

import numpy as np
import torch

from prunekit.core import native
from prunekit.core.masks import block_sums, prune_count

__all__ = ["tensor_mask", "global_masks", "NonFiniteWeights"]

_INT_OF = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}


class NonFiniteWeights(ValueError):
    """A score was NaN or inf, so the tensor cannot be ranked."""


def _score_dtype(dtype, device):
    if dtype == torch.float64 and device.type != "mps":
        return torch.float64
    return torch.float32


def _scores(weight, layout):
    x = weight.detach().permute(layout.perm)
    if layout.block is not None:
        r, c = layout.block
        rows, cols = x.shape[-2], x.shape[-1]
        x = block_sums(x.to(_score_dtype(torch.float64, x.device)).reshape(-1, rows // r, r, cols // c, c).square())
    else:
        x = x.to(_score_dtype(weight.dtype, x.device)).abs()  # a copy: the weight is never modified
    size = layout.group_size or x.numel()
    return x.reshape(-1, size)


def _from_groups(groups, layout, shape):
    permuted = [shape[i] for i in layout.perm]
    m = groups
    if layout.block is not None:
        r, c = layout.block
        rows, cols = permuted[-2], permuted[-1]
        m = m.reshape(-1, rows // r, 1, cols // c, 1).expand(-1, rows // r, r, cols // c, c)
    m = m.reshape(permuted)
    inverse = [0] * len(layout.perm)
    for i, axis in enumerate(layout.perm):
        inverse[axis] = i
    return m.permute(inverse).contiguous()


def _keys(scores, pruned_before):
    """Integer keys ordered as the (non-negative) float scores, and their histogram bins.

    Bin 0 holds the entries pruned before (and nothing else); bin ``1 + top 16 bits`` the others.
    """
    int_dtype, bits = _INT_OF[scores.dtype]
    keys = scores.reshape(-1).view(int_dtype)
    top = (keys >> (bits - 16)) + 1
    if pruned_before is not None:
        top *= (~pruned_before).reshape(-1).view(torch.uint8)  # cheaper than masked_fill on CPU
    inf_bin = (torch.tensor(float("inf"), dtype=scores.dtype).view(int_dtype) >> (bits - 16)).item() + 1
    return keys, top, inf_bin


def _kept_exact(scores, count, pruned_before=None):
    """Kept entries of a single long row: all but the ``count`` lowest, ties pruned at the lower index.

    Entries pruned before rank below everything (they are all in bin 0 and never kept).
    """
    n = scores.numel()
    keys, top, inf_bin = _keys(scores, pruned_before)
    counts = torch.bincount(top, minlength=inf_bin + 1)
    if int(counts[inf_bin:].sum()):
        raise NonFiniteWeights()
    already = int(counts[0]) if pruned_before is not None else 0
    count = max(count, already)
    if count <= 0:
        return torch.ones(1, n, dtype=torch.bool, device=scores.device)
    if count >= n:
        return torch.zeros(1, n, dtype=torch.bool, device=scores.device)
    still = None if pruned_before is None else ~pruned_before.reshape(-1)
    if count == already:
        return still.reshape(1, n)  # nothing new to prune
    cumulative = counts.cumsum(0)
    b = int(torch.searchsorted(cumulative, count))  # the bin that holds the count-th smallest key
    band = keys[top == b]
    below = int(cumulative[b - 1])
    threshold = torch.kthvalue(band, count - below).values
    missing = count - below - int((band < threshold).sum())  # ties at the threshold still to prune
    kept = keys > threshold
    if missing != int((band == threshold).sum()):  # rare: some ties stay, the higher indices
        equal = keys == threshold
        if still is not None:
            equal &= still
        kept[torch.nonzero(equal).reshape(-1)[missing:]] = True
    if still is not None:
        kept &= still
    return kept.reshape(1, n)


#: Groups at least this long take the fast path (a module attribute so tests can lower it).
FAST_MIN = 1 << 19
_SAMPLE_STRIDE = native.SAMPLE_STRIDE


def _true_positions(flags):
    """Indices (ascending) of the True entries of a 1-D bool tensor that has few of them.

    ``nonzero`` over the bytes read eight at a time as int64 words first, then only inside the
    words that hold a True: about 5x faster than ``nonzero`` over every byte when few are set.
    """
    n = flags.numel()
    n8 = n - n % 8
    words = torch.nonzero(flags[:n8].view(torch.int64)).reshape(-1)
    rows, cols = torch.nonzero(flags[:n8].view(-1, 8)[words], as_tuple=True)
    positions = words[rows] * 8 + cols
    if n8 < n:
        positions = torch.cat([positions, torch.nonzero(flags[n8:]).reshape(-1) + n8])
    return positions


def _bracket(sample, n, count, shift):
    """Keys ``low <= high`` between which the ``count``-th smallest of ``n`` keys very likely lies.

    ``sample``: every ``_SAMPLE_STRIDE``-th key. Only a histogram of its top bits (``key >> shift``) is
    used. The range never includes bin 0 (zeros and subnormals): entries pruned before are there.
    """
    ranks = list(native.sample_ranks(sample.numel(), n, count))
    if sample.device.type == "cpu":  # numpy: the same ops at a fraction of torch's per-call cost
        cumulative = np.cumsum(np.bincount(sample.numpy() >> shift))
        low_bin, high_bin = np.searchsorted(cumulative, ranks, side="right").tolist()
    else:
        cumulative = torch.bincount(sample >> shift).cumsum(0)
        ranks = torch.tensor(ranks, dtype=cumulative.dtype, device=sample.device)
        low_bin, high_bin = torch.searchsorted(cumulative, ranks, right=True).tolist()
    return max(low_bin, 1) << shift, ((high_bin + 1) << shift) - 1


def _rank_band(band, positions, rank):
    """The ``rank``-th smallest of ``band`` (the values at ``positions``, ascending), and the positions of
    the entries equal to it that stay (the higher indices of a tie that straddles the rank)."""
    if isinstance(band, np.ndarray):  # numpy ranks a small band at a fraction of torch's per-call cost
        return native.rank_band(band, positions, rank)
    threshold = torch.kthvalue(band, rank).values
    less = int((band < threshold).sum())
    return threshold, positions[band == threshold][rank - less:]


def _kept_fast(scores, count, prior):
    """As :func:`_kept_exact` (``prior``: True = kept before), or None when the exact path must decide."""
    n = scores.numel()
    int_dtype, bits = _INT_OF[scores.dtype]
    keys = scores.reshape(-1).view(int_dtype)
    inf_key = int(torch.tensor(float("inf"), dtype=scores.dtype).view(int_dtype))
    if int(keys.amax()) >= inf_key:
        raise NonFiniteWeights()
    low, high = _bracket(keys[::_SAMPLE_STRIDE], n, count, bits - 17)
    outside = keys < low
    below = int(torch.count_nonzero(outside))
    kept = keys > high
    above = int(torch.count_nonzero(kept))
    if not below < count <= n - above:
        return None
    inside = _true_positions(outside.logical_or_(kept).logical_not_())
    if keys.device.type == "cpu":
        inside, flat = inside.numpy(), kept.numpy()
        band = keys.numpy()[inside]
    else:
        flat, band = kept, keys[inside]
    threshold, staying_ties = _rank_band(band, inside, count - below)
    flat[inside[band > threshold]] = True
    flat[staying_ties] = True
    if prior is not None:
        kept &= prior.reshape(-1)
        if int(torch.count_nonzero(kept)) != n - count:
            return None  # an entry pruned before was not 0.0: rank it the reference's way
    return kept.reshape(1, n)


def _kept_one_group(scores, count, prior=None):
    """Kept entries of one long row of non-negative scores after pruning its ``count`` lowest."""
    n = scores.numel()
    if n >= FAST_MIN and 0 < count < n:
        kept = _kept_fast(scores, count, prior)
        if kept is not None:
            return kept
    return _kept_exact(scores, count, None if prior is None else ~prior.reshape(-1))


def _kept_per_row(scores, counts):
    """Kept entries of each row: all but its ``counts[row]`` lowest, ties pruned at the lower index."""
    size = scores.shape[1]
    if size <= 8:  # N:M and small banks: rank by comparing columns pairwise, ~6x faster than a sort
        columns = [scores[:, j] for j in range(size)]
        counts = counts.to(torch.uint8)
        kept = []
        for j, x in enumerate(columns):
            rank = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
            for i, y in enumerate(columns):  # entries ranked below x: smaller, or equal at a lower index
                if i != j:
                    rank += (y <= x) if i < j else (y < x)
            kept.append(rank >= counts)
        return torch.stack(kept, 1)
    order = torch.sort(scores, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks >= counts.reshape(-1, 1)


def _select(scores, count, prior_groups):
    """Kept (True) entries of each row of ``scores`` after pruning ``count`` per row."""
    if scores.shape[0] == 1:
        return _kept_one_group(scores, count, prior_groups)
    pruned_before = None if prior_groups is None else ~prior_groups
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteWeights()
    counts = torch.full((scores.shape[0],), count, device=scores.device)
    if pruned_before is not None:
        scores = scores.masked_fill(pruned_before, -1.0)
        counts = torch.clamp(pruned_before.sum(dim=1), min=count)
    return _kept_per_row(scores, counts)


def _prior_groups(prior, layout):
    """True where a group entry still has a kept element (a block is pruned only when all of it is)."""
    if layout.block is None:
        size = layout.group_size or prior.numel()
        return prior.permute(layout.perm).reshape(-1, size)
    return _scores(prior.to(torch.float32), layout) > 0


def tensor_mask(weight, sparsity, pattern, prior=None):
    """Mask (True = kept) of one canonical-layout weight; see ``core.masks.reference_mask``."""
    layout = pattern.layout(tuple(weight.shape))
    scores = _scores(weight, layout)
    prior_groups = None if prior is None else _prior_groups(prior, layout)
    kept = _select(scores, prune_count(sparsity, scores.shape[1]), prior_groups)
    mask = _from_groups(kept, layout, tuple(weight.shape))
    # element-wise layouts rank pruned entries first, so only blocks can cover an earlier zero
    return mask & prior if prior is not None and layout.block is not None else mask


def global_masks(weights, sparsity, priors=None):
    """Masks of several tensors sharing one threshold; see ``core.masks.reference_global_masks``."""
    device = weights[0].device
    dtype = torch.float64 if any(w.dtype == torch.float64 for w in weights) else torch.float32
    dtype = _score_dtype(dtype, device)
    scores = torch.cat([w.detach().to(device=device, dtype=dtype).abs().reshape(-1) for w in weights])
    prior = None
    if priors is not None:
        prior = torch.cat([p.to(device).reshape(-1) for p in priors]).reshape(1, -1)
    kept = _select(scores.reshape(1, -1), prune_count(sparsity, scores.numel()), prior).reshape(-1)
    masks, start = [], 0
    for w in weights:
        masks.append(kept[start:start + w.numel()].reshape(w.shape).to(w.device))
        start += w.numel()
    return masks
