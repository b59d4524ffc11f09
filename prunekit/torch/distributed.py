"""Prune events on sharded parameters (FSDP2's ``DTensor`` shards) with the masks of a single process.

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor``: each rank holds a slice
of it (``Shard(0)``: a range of rows, uneven when the rows do not divide by the ranks). No rank ever
holds a whole tensor here. At a prune event each rank works on its own slice, and only small summaries
cross the process group:

* one ``all_reduce`` of three numbers per tensor (entries, entries pruned before, NaN/inf found);
* a radix select of the threshold: the keys (the bits of ``|w|``, which order as the magnitudes) are
  histogrammed ``DIGIT`` bits at a time, the histograms summed over the ranks (``2**DIGIT`` counts per
  tensor), and the bin that holds the ``count``-th smallest key narrows the next round: 3 rounds for
  float32, 6 for float64;
* when a tie at the threshold straddles the count, the same select over the *global indices* of the
  tied entries finds how far the lower indices are pruned (the reference's tie rule), in ~3 rounds.

Every tensor of an event that shares a process group goes through the same rounds together: one
``all_reduce`` per round for the whole event. Patterns whose groups lie inside one shard need no
communication at all: N:M and bank-balanced groups run along the input axis (dim 1), so under
``Shard(0)`` each rank selects its rows alone. ``Block(r, c)`` ranks every block of a tensor together
(the radix select over block scores), and its blocks must not straddle a shard boundary: ``Shard(0)``
needs the rows per shard (``ceil(rows / ranks)``, torch's chunking) divisible by ``r``.

Masks are ``DTensor`` with the parameter's mesh and placements (each rank stores its slice, bool), so
``torch.distributed.checkpoint`` saves them sharded and reshards them on load to another number of
ranks, as it does the parameters and Adam's moments.
"""

import sys

import torch
import torch.distributed as dist

from prunekit.core.masks import prune_count
from prunekit.errors import PlanError
from prunekit.torch import _select

__all__ = ["is_sharded", "local", "check_sharding", "check_plan", "as_local_mask", "counts", "event_masks", "DIGIT"]

#: bits per radix round: 4096 counts per tensor per round cross the group (32 KiB as int64)
DIGIT = 12


def _dtensor_class():
    # torch.distributed.tensor takes seconds to import (it pulls in dynamo): while nobody has imported
    # it, no tensor can be a DTensor, and ``import prunekit.torch`` stays as fast as it was
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(t):
    """Whether ``t`` is a ``DTensor`` (FSDP2's parameters, their gradients, states and masks)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def local(t):
    """The tensor this rank holds: a ``DTensor``'s local shard (same storage: in-place changes reach the
    parameter), anything else as it is."""
    return t._local_tensor if is_sharded(t) else t


class _Sharding:
    """Where this rank's slice of a ``DTensor`` sits: the sharded dim (None: replicated), the process
    group along which it is sharded, and the offset and length of this rank's slice on that dim."""

    def __init__(self, p):
        shards = [(i, pl) for i, pl in enumerate(p.placements) if pl.is_shard()]
        self.mesh = p.device_mesh
        self.dim = self.mesh_dim = self.group = None
        self.offset, self.length, self.chunk, self.ranks = 0, None, None, 1
        if shards:
            self.mesh_dim, placement = shards[0]
            self.dim = placement.dim
            self.ranks = self.mesh.size(self.mesh_dim)
            size = p.shape[self.dim]
            self.chunk = -(-size // self.ranks)  # torch.chunk's: ceil, the last shards shorter or empty
            coordinate = self.mesh.get_local_rank(self.mesh_dim)
            self.offset = min(coordinate * self.chunk, size)
            self.length = min(size, self.offset + self.chunk) - self.offset
            self.group = self.mesh.get_group(self.mesh_dim)

    def key(self):
        return None if self.dim is None else (id(self.group),)


def _placement_problem(name, p):
    odd = [pl for pl in p.placements if not (pl.is_shard() or pl.is_replicate())]
    shards = [pl for pl in p.placements if pl.is_shard()]
    if odd or len(shards) > 1 or any(type(pl).__name__ != "Shard" for pl in shards):
        return (f"{name!r} is a DTensor with placements {tuple(p.placements)}; prunekit prunes DTensors sharded "
                "on one dim of one mesh dim (FSDP2's Shard(0), with Replicate for HSDP), or replicated")
    return None


def check_sharding(name, p, pattern):
    """``None`` when ``pattern`` can be selected on ``p``'s shards with the single-process masks, else a
    sentence saying which shardings it needs. Plain tensors always fit (every rank holds all of them)."""
    if not is_sharded(p):
        return None
    problem = _placement_problem(name, p)
    if problem:
        return problem
    where = _Sharding(p)
    if where.dim is None or where.ranks == 1:
        return None
    layout = pattern.layout(tuple(p.shape))
    rows = f"{where.chunk} per shard (ceil({p.shape[where.dim]} / {where.ranks} ranks))"
    if layout.group_size is not None and where.dim == 1 and where.chunk % layout.group_size:
        return (f"{pattern!r} on {name!r} needs whole groups of {layout.group_size} input-axis entries on each rank, "
                f"but dim 1 is sharded with {rows}; shard dim 0 (FSDP2's default) or exclude the tensor")
    if layout.block is not None and where.dim in (0, 1):
        size = layout.block[where.dim]
        if where.chunk % size:
            return (f"{pattern!r} on {name!r} needs shard boundaries at multiples of {size} on dim {where.dim} "
                    f"(blocks must not straddle ranks), but it is sharded with {rows}; change the number of "
                    f"ranks, pad the layer, use another pattern, or exclude the tensor")
    return None


def check_plan(specs):
    """Raise a ``PlanError`` for the first planned ``(spec, parameter)`` whose sharding its pattern cannot
    follow, or for ``Global()`` tensors sharded along different process groups."""
    keys = set()
    for spec, p in specs:
        problem = check_sharding(spec.name, p, spec.pattern)
        if problem:
            raise PlanError(problem)
        if spec.pattern.is_global and is_sharded(p) and _Sharding(p).dim is not None:
            keys.add(_Sharding(p).key())
    if len(keys) > 1:
        raise PlanError("Global() tensors are sharded over different process groups (meshes); one threshold "
                        "needs them on one mesh: use the same mesh for every fully_shard call, or Unstructured()")


def as_local_mask(mask, p):
    """A loaded mask in ``p``'s form: a ``DTensor`` shaped and placed like ``p`` when ``p`` is one (a whole
    mask from a full state dict is sliced locally, no communication), a plain tensor otherwise."""
    if is_sharded(p):
        if is_sharded(mask):
            if mask.placements != p.placements:
                mask = mask.redistribute(p.device_mesh, p.placements)
            return mask.to(device=p.device, dtype=torch.bool)
        where = _Sharding(p)
        piece = mask.to(device=local(p).device, dtype=torch.bool)
        if where.dim is not None:
            piece = piece.narrow(where.dim, where.offset, where.length)
        return _wrap(piece.contiguous(), p)
    if is_sharded(mask):
        mask = mask.full_tensor()
    return mask.to(device=p.device, dtype=torch.bool)


def counts(pairs):
    """``[int(flags.sum())]`` for ``(flags, parameter)`` pairs, over all ranks: ``flags`` is a bool tensor of
    this rank's entries of ``parameter`` (its local shard for a DTensor); the local sums of sharded ones are
    added up over their shard group, one ``all_reduce`` per group. Every rank must call it alike."""
    sums = [int(local(flags).sum()) for flags, _ in pairs]
    by_group = {}
    for i, (_, p) in enumerate(pairs):
        if is_sharded(p):
            where = _Sharding(p)
            if where.dim is not None and where.ranks > 1:
                by_group.setdefault(id(where.group), (where.group, []))[1].append(i)
    for group, index in by_group.values():
        summed = _all_reduce(torch.tensor([sums[i] for i in index], dtype=torch.int64), group).tolist()
        for i, value in zip(index, summed):
            sums[i] = value
    return sums


def _wrap(local_mask, p):
    return _dtensor_class().from_local(local_mask, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride())


# -- the pieces of a selection ------------------------------------------------------------------------------

class _Piece:
    """One tensor's local share of a selection: scores (1-D, non-negative), the groups kept before (or
    None), how local positions map to global indices, and whether this rank's copy counts (a replicated
    tensor counts once, on rank 0 of the group)."""

    def __init__(self, scores, prior, grid, offsets, base, counted):
        self.scores, self.prior = scores.reshape(-1), None if prior is None else prior.reshape(-1)
        self.grid = grid            # global shape of the score grid
        self.local_shape = tuple(scores.shape) if scores.dim() == len(grid) else None
        self.offsets = offsets      # this rank's offset in each dim of the grid
        self.base = base            # global index of the grid's first entry (Global(): the tensors before)
        self.counted = counted
        int_dtype, _ = _select._INT_OF[self.scores.dtype]
        self.keys = self.scores.view(int_dtype)

    def global_index(self, positions):
        """Global indices (row-major in the grid, plus ``base``) of local flat ``positions``."""
        index = torch.zeros_like(positions)
        rest = positions
        local_shape = self.local_shape
        for d in reversed(range(len(self.grid))):
            coordinate = rest % local_shape[d] + self.offsets[d]
            rest = rest // local_shape[d]
            stride = 1
            for size in self.grid[d + 1:]:
                stride *= size
            index += coordinate * stride
        return index + self.base


def _element_piece(p, dtype, base=0, counted=True, prior=None):
    """A piece scoring ``|w|`` of every local entry of ``p`` in ``dtype`` (grid: the tensor's own shape)."""
    shard = local(p).detach()
    scores = shard.to(dtype).abs()
    offsets = [0] * p.dim()
    if is_sharded(p):
        where = _Sharding(p)
        if where.dim is not None:
            offsets[where.dim] = where.offset
    prior = None if prior is None else local(prior)
    return _Piece(scores, prior, tuple(p.shape), offsets, base, counted)


def _block_piece(p, layout, prior):
    """A piece scoring the blocks of ``p``'s local rows (their boundaries checked by :func:`check_sharding`)."""
    shard = local(p).detach()
    grid, offsets = [], []
    where = _Sharding(p)
    r, c = layout.block
    for i, axis in enumerate(layout.perm):
        size, shrink = p.shape[axis], 1
        if i == len(layout.perm) - 2:
            shrink = r
        elif i == len(layout.perm) - 1:
            shrink = c
        grid.append(size // shrink)
        offsets.append((where.offset if axis == where.dim else 0) // shrink)
    local_grid = [local(p).shape[axis] // (r if i == len(layout.perm) - 2 else c if i == len(layout.perm) - 1 else 1)
                  for i, axis in enumerate(layout.perm)]
    if shard.numel() == 0:  # an empty shard (more ranks than rows to give them)
        scores = torch.zeros(local_grid, dtype=torch.float64, device=shard.device)
        return _Piece(scores, None if prior is None else scores > 0, tuple(grid), offsets, 0, True)
    scores = _select._scores(shard, layout)  # (1, local blocks), float64 sums of squares
    piece_prior = None if prior is None else _select._prior_groups(local(prior), layout)
    return _Piece(scores.reshape(local_grid), piece_prior, tuple(grid), offsets, 0, True)


class _Problem:
    """One selection: ``count`` entries to prune over every piece on every rank of ``group``; ``label``: the
    names of its tensors (for errors)."""

    def __init__(self, pieces, count, label):
        self.pieces, self.count, self.label = pieces, count, label
        self.kept = None  # per piece: bool 1-D, the result


# -- the collective radix select ------------------------------------------------------------------------------

def _comm_device(group):
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")


def _all_reduce(t, group):
    if group is not None and dist.get_world_size(group) > 1:
        device = t.device
        target = _comm_device(group)
        moved = t.to(target)
        dist.all_reduce(moved, group=group)
        t = moved.to(device)
    return t


def _kth(candidates, ranks, width, group):
    """Per problem, the ``ranks[i]``-th smallest (1-based) of its keys over all ranks; and how many of
    its keys are below and equal to that one, over all ranks.

    ``candidates[i]``: ``[(keys 1-D int tensor, counted)]`` per piece (non-negative keys of at most
    ``width`` bits). Each round histograms the next ``DIGIT`` bits of the keys still in the running and
    sums the histograms over the group; only the keys in the chosen bin stay.
    """
    bins = 1 << DIGIT
    count = len(candidates)
    prefix, below = [0] * count, [0] * count
    equal = [0] * count
    cands = [list(c) for c in candidates]
    high = width
    while high > 0:
        low = max(high - DIGIT, 0)
        digit_mask = (1 << (high - low)) - 1
        hist = torch.zeros(count, bins, dtype=torch.int64)
        digits = []
        for i, pieces in enumerate(cands):
            row = []
            for keys, counted in pieces:
                d = (keys >> low) & digit_mask
                row.append(d)
                if counted and d.numel():
                    hist[i] += torch.bincount(d.to(torch.int64), minlength=bins).cpu()
            digits.append(row)
        hist = _all_reduce(hist, group)
        cumulative = hist.cumsum(1)
        for i in range(count):
            need = ranks[i] - below[i]
            b = int(torch.searchsorted(cumulative[i], torch.tensor([need]), right=False))
            below[i] += int(cumulative[i, b - 1]) if b > 0 else 0
            equal[i] = int(hist[i, b])
            prefix[i] = (prefix[i] << (high - low)) | b
            cands[i] = [(keys[d == b], counted) for (keys, counted), d in zip(cands[i], digits[i])]
        high = low
    return prefix, below, equal


def _run(problems, group):
    """Fill ``problem.kept`` for each problem (every rank of ``group`` calls this with the same problems, in
    the same order)."""
    if not problems:
        return
    stats = torch.zeros(len(problems), 3, dtype=torch.int64)  # entries, pruned before, non-finite
    live = []
    for i, problem in enumerate(problems):
        row = []
        for piece in problem.pieces:
            inf_key = int(torch.tensor(float("inf"), dtype=piece.scores.dtype).view(piece.keys.dtype))
            alive = piece.prior
            row.append(alive)
            if piece.counted:
                stats[i, 0] += piece.keys.numel()
                keys = piece.keys
                if alive is not None:
                    stats[i, 1] += keys.numel() - int(alive.sum())
                    keys = keys[alive]  # entries pruned before rank first whatever they hold (the reference's)
                if keys.numel():
                    stats[i, 2] += int((keys >= inf_key).sum())  # NaN bits are above inf's
        live.append(row)
    stats = _all_reduce(stats, group).tolist()
    bad = [name for p, (_, _, odd) in zip(problems, stats) if odd for name in p.label]
    if bad:
        raise _select.NonFiniteWeights(bad)
    selecting, wanted = [], []
    for problem, row, (n, before, _) in zip(problems, live, stats):
        fresh = max(problem.count, before) - before  # entries pruned before go first (the reference's rule)
        if fresh <= 0 or fresh >= n - before:
            everything = fresh > 0
            problem.kept = [torch.zeros_like(p.keys, dtype=torch.bool) if everything
                            else (p.prior.clone() if p.prior is not None else torch.ones_like(p.keys, dtype=torch.bool))
                            for p in problem.pieces]
            continue
        selecting.append((problem, row))
        wanted.append(fresh)
    if not selecting:
        return
    width = max(p.keys.element_size() * 8 - 1 for problem, _ in selecting for p in problem.pieces)
    candidates = [[(p.keys if alive is None else p.keys[alive], p.counted) for p, alive in zip(problem.pieces, row)]
                  for problem, row in selecting]
    thresholds, below, equal = _kth(candidates, wanted, width, group)
    ties, tie_ranks = [], []
    for (problem, row), t, b, e, fresh in zip(selecting, thresholds, below, equal, wanted):
        problem.kept = []
        tied = fresh - b  # entries equal to the threshold still to prune
        positions = []
        for p, alive in zip(problem.pieces, row):
            kept = p.keys > t
            if alive is not None:
                kept &= alive
            problem.kept.append(kept)
            if tied < e:
                equal_here = p.keys == t
                if alive is not None:
                    equal_here &= alive
                positions.append(torch.nonzero(equal_here).reshape(-1))
        if tied < e:  # some ties stay: the ones at the higher global indices
            ties.append((problem, positions))
            tie_ranks.append(tied)
    if not ties:
        return
    index_candidates = [[(p.global_index(pos), p.counted) for p, pos in zip(problem.pieces, positions)]
                        for problem, positions in ties]
    total = max(p.base + _numel(p.grid) for problem, _ in ties for p in problem.pieces)
    cuts, _, _ = _kth(index_candidates, tie_ranks, max(1, int(total).bit_length()), group)
    for (problem, positions), cands, cut in zip(ties, index_candidates, cuts):
        for kept, pos, (index, _) in zip(problem.kept, positions, cands):
            kept[pos[index > cut]] = True


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# -- the event --------------------------------------------------------------------------------------------

def _group_of(params):
    for p in params:
        if is_sharded(p):
            where = _Sharding(p)
            if where.dim is not None and where.ranks > 1:
                return where.group
    return None


def event_masks(items, global_set=None):
    """Masks of one prune event for sharded parameters, equal to the single-process reference's.

    Args:
        items: ``[(name, parameter, sparsity, pattern, prior mask or None)]`` of per-tensor patterns.
        global_set: ``(names, parameters, sparsity, priors or None)`` of the ``Global()`` tensors, or None.

    Returns ``{name: mask}``, each mask a ``DTensor`` placed like its parameter (plain tensors for plain
    parameters). Every rank must call it with the same arguments (the plan's order).
    """
    out, by_group, finish = {}, {}, []
    for name, p, sparsity, pattern, prior in items:
        layout = pattern.layout(tuple(p.shape))
        group = _group_of([p])
        if layout.group_size is not None or group is None:  # groups inside a shard, or a whole tensor here
            mask = _select.tensor_mask(local(p), sparsity, pattern, None if prior is None else local(prior))
            out[name] = _wrap(mask, p) if is_sharded(p) else mask
            continue
        if layout.block is not None:
            piece = _block_piece(p, layout, prior)
        else:
            piece = _element_piece(p, _select._score_dtype(p.dtype, local(p).device), prior=prior)
        problem = _Problem([piece], prune_count(sparsity, _numel(piece.grid)), [name])
        by_group.setdefault(id(group), (group, []))[1].append(problem)
        finish.append((problem, [(name, p, prior, layout)]))
    if global_set is not None:
        names, params, sparsity, priors = global_set
        group = _group_of(params)
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        dtype = _select._score_dtype(dtype, local(params[0]).device)
        if group is None:
            masks = _select.global_masks([local(p) for p in params], sparsity,
                                         None if priors is None else [local(m) for m in priors])
            out.update((n, _wrap(m, p) if is_sharded(p) else m) for n, p, m in zip(names, params, masks))
        else:
            me = dist.get_rank(group)
            pieces, base = [], 0
            for i, p in enumerate(params):
                counted = _group_of([p]) is not None or me == 0  # a replicated tensor counts once
                pieces.append(_element_piece(p, dtype, base, counted, None if priors is None else priors[i]))
                base += p.numel()
            problem = _Problem(pieces, prune_count(sparsity, base), list(names))
            by_group.setdefault(id(group), (group, []))[1].append(problem)
            finish.append((problem, [(n, p, None, None) for n, p in zip(names, params)]))
    for group, problems in by_group.values():
        _run(problems, group)  # NonFiniteWeights(labels) on every rank alike: the counts are summed first
    for problem, targets in finish:
        for kept, (name, p, prior, layout) in zip(problem.kept, targets):
            if local(p).numel() == 0:
                mask = torch.zeros(local(p).shape, dtype=torch.bool, device=local(p).device)
            elif layout is not None and layout.block is not None:
                mask = _select._from_groups(kept.reshape(1, -1), layout, tuple(local(p).shape))
                if prior is not None:
                    mask &= local(prior)
            else:
                mask = kept.reshape(local(p).shape)
            out[name] = _wrap(mask.contiguous(), p) if is_sharded(p) else mask
    return out
