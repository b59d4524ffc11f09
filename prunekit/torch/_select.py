"""Torch mask selection, on the parameter's own device, equal to ``prunekit.core.masks`` (ties included).

The reference ranks every group with a stable argsort. Here a group of many entries (a whole tensor,
unstructured or global) uses ``kthvalue`` to find the threshold and then applies the tie rule to the
entries equal to it; groups of a few entries (banks, N:M) use a stable sort per row.
"""

import torch

from prunekit.core.masks import prune_count

__all__ = ["tensor_mask", "global_masks"]


def _score_dtype(dtype, device):
    if dtype == torch.float64 and device.type != "mps":
        return torch.float64
    return torch.float32


def _scores(weight, layout):
    x = weight.detach().permute(layout.perm)
    if layout.block is not None:
        r, c = layout.block
        rows, cols = x.shape[-2], x.shape[-1]
        x = x.to(_score_dtype(torch.float64, x.device)).reshape(-1, rows // r, r, cols // c, c)
        x = x.square().sum(dim=(2, 4))
    else:
        x = x.to(_score_dtype(weight.dtype, x.device)).abs()
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


def _lowest_one_group(scores, count):
    """Pruned entries of a single long row: the ``count`` lowest, ties to the lower index."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if count <= 0:
        return torch.zeros(1, n, dtype=torch.bool, device=flat.device)
    if count >= n:
        return torch.ones(1, n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, count).values
    pruned = flat < threshold
    missing = count - int(pruned.sum())
    ties = torch.nonzero(flat == threshold).reshape(-1)[:missing]
    pruned[ties] = True
    return pruned.reshape(1, n)


def _lowest_per_row(scores, counts):
    order = torch.sort(scores, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks < counts.reshape(-1, 1)


def _select(scores, count, prior_groups):
    if prior_groups is not None:
        pruned_before = ~prior_groups
        scores = scores.masked_fill(pruned_before, -1.0)
    if scores.shape[0] == 1:
        if prior_groups is not None:
            count = max(count, int(pruned_before.sum()))
        return _lowest_one_group(scores, count)
    counts = torch.full((scores.shape[0],), count, device=scores.device)
    if prior_groups is not None:
        counts = torch.clamp(pruned_before.sum(dim=1), min=count)
    return _lowest_per_row(scores, counts)


def tensor_mask(weight, sparsity, pattern, prior=None):
    """Mask (True = kept) of one canonical-layout weight; see ``core.masks.reference_mask``."""
    layout = pattern.layout(tuple(weight.shape))
    scores = _scores(weight, layout)
    prior_groups = None if prior is None else _scores(prior.to(torch.float32), layout) > 0
    pruned = _select(scores, prune_count(sparsity, scores.shape[1]), prior_groups)
    mask = ~_from_groups(pruned, layout, tuple(weight.shape))
    return mask if prior is None else mask & prior


def global_masks(weights, sparsity, priors=None):
    """Masks of several tensors sharing one threshold; see ``core.masks.reference_global_masks``."""
    device = weights[0].device
    dtype = torch.float64 if any(w.dtype == torch.float64 for w in weights) else torch.float32
    dtype = _score_dtype(dtype, device)
    scores = torch.cat([w.detach().to(device=device, dtype=dtype).abs().reshape(-1) for w in weights])
    prior = None
    if priors is not None:
        prior = torch.cat([p.to(device).reshape(-1) for p in priors]).reshape(1, -1)
    pruned = _select(scores.reshape(1, -1), prune_count(sparsity, scores.numel()), prior).reshape(-1)
    masks, start = [], 0
    for w in weights:
        masks.append((~pruned[start:start + w.numel()]).reshape(w.shape).to(w.device))
        start += w.numel()
    return masks
