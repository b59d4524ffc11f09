"""Native kernels for prune events and updates on CPU: built on first use, optional, exact.

An unstructured prune event must find, in each tensor, the ``count``-th smallest magnitude, and do it
exactly (the masks equal :mod:`prunekit.core.masks`). :func:`select_masks` does it in three passes over
each tensor, made by small C functions (``_native/select.c``) that the system C compiler builds once
into a cache directory:

1. a 1-in-``SAMPLE_STRIDE`` sample of the keys (the bits of ``|w|``, which order as the magnitudes) is
   histogrammed; the ranks ``SIGMAS`` binomial standard deviations either side of the expected one give
   a narrow key range [lo, hi];
2. one pass counts the keys below ``lo`` exactly and collects those inside the range (~1%) with their
   indices; if the ``count``-th smallest is not inside (an unlucky sample), or an entry is NaN/inf, or an
   entry pruned before is not 0.0, the tensor is left to the caller's exact path;
3. the range is ranked with ``np.partition``; ties at the threshold are pruned at the lower index first
   (the reference's rule); a last pass writes the mask and its count is checked.

:func:`group_masks` does N:M groups and banks: groups of up to 8 compare every pair of members (eight
groups per AVX2 instruction); longer banks keep each bank's few smallest keys when it prunes at most 8
more than before, and run a selection per bank otherwise.

:func:`sgd_steps` and :func:`adam_steps` are the default SGD and Adam/AdamW updates of ``prunekit.torch``'s
optimizers on CPU: one pass per tensor, torch's arithmetic, with the mask that writes the zeros of what a
prune event has just pruned (see ``prunekit/torch/_native_step.py``).

The kernels use AVX2 and FMA: they are built only on x86-64 CPUs that have them, with ``cc`` (or ``$CC``), and
``PRUNEKIT_NATIVE=0`` turns them off. Anything that goes wrong while building or loading them gives one
warning and :func:`kernels` returns None: callers then use their own (slower) path. Tensors are split
between ``threads`` Python threads; the C calls release the GIL.

Used by ``prunekit.torch`` for ``compile_step=True`` events on CPU; it works on numpy arrays, so any
adapter can call it.
"""

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["kernels", "select_masks", "zero_where", "block_expand", "group_masks", "block_scores", "block_select",
           "sgd_steps", "adam_steps", "SAMPLE_STRIDE", "SIGMAS", "sample_ranks", "rank_band"]

SAMPLE_STRIDE = 17  # prime, so the sample does not line up with a kernel or channel period
SIGMAS = 3.5
_ABI = 14
_BINS = 1 << 16
_CHUNK = 64  # CHUNK in select.c
_SOURCE = Path(__file__).with_name("_native") / "select.c"
_FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c99"]

_lock = threading.Lock()
_loaded = {}  # "kernels": the loaded library or None (also when it failed: no retry, one warning)
_pools = {}
_local = threading.local()


def sample_ranks(size, n, count):
    """Ranks in a sample of ``size`` (of ``n`` entries) between which the ``count``-th smallest very likely
    falls: ``SIGMAS`` binomial standard deviations either side of where it is expected."""
    p = count / n
    margin = SIGMAS * math.sqrt(size * p * (1.0 - p)) + 2.0
    return max(0, math.floor(p * size - margin)), min(size, math.ceil(p * size + margin))


def rank_band(band, positions, rank):
    """The ``rank``-th smallest (1-based) of the numpy array ``band`` (the values at ``positions``,
    ascending), and the positions of the entries equal to it that stay: ties are pruned at the lower
    index first, so of the equal entries the first ``rank - (entries below it)`` go."""
    threshold = np.partition(band, rank - 1)[rank - 1]
    less = int(np.count_nonzero(band < threshold))
    return threshold, positions[band == threshold][rank - less:]


def _cache_dir():
    root = os.environ.get("PRUNEKIT_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunekit"


def _x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def _build(compiler):
    """Path of the shared library, compiled now unless the cache has it (keyed by source, flags, compiler).
    ``compiler``: the command as a list (``$CC`` may hold a wrapper and flags, e.g. ``ccache gcc``)."""
    source = _SOURCE.read_bytes()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(b"\0".join([source, " ".join(compiler + _FLAGS).encode(), version.encode()])).hexdigest()[:20]
    directory = _cache_dir()
    target = directory / f"select-{digest}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: processes starting together (DDP ranks) never load half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([*compiler, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(compiler)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load():
    if os.environ.get("PRUNEKIT_NATIVE", "1") == "0":
        return None
    if not _x86_64():
        warnings.warn(f"prunekit: the native prune-event kernels need an x86-64 CPU with AVX2 (this is "
                      f"{platform.machine() or 'unknown'}); prune events use the torch path", RuntimeWarning,
                      stacklevel=3)
        return None
    found = shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not compiler:
        warnings.warn("prunekit: no C compiler (cc, gcc or $CC) for the native prune-event kernels; "
                      "prune events use the slower torch path", RuntimeWarning, stacklevel=3)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
        if lib.pk_abi() != _ABI:
            raise RuntimeError("the built library does not match this prunekit")
        if lib.pk_simd() != 1:  # the CPU itself answers (cpuid), not a parse of /proc/cpuinfo
            warnings.warn("prunekit: this CPU lacks AVX2 or FMA, which the native kernels need; prune "
                          "events and updates use the torch path", RuntimeWarning, stacklevel=3)
            return None
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"prunekit: native prune-event kernels unavailable ({err}); prune events use the "
                      "slower torch path", RuntimeWarning, stacklevel=3)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.pk_bracket.restype = None
    lib.pk_bracket.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr]
    lib.pk_scan.restype = i64
    lib.pk_scan.argtypes = [ptr, i64, ptr, ctypes.c_uint32, ctypes.c_uint32, ptr, ptr, i64, ptr]
    lib.pk_mask.restype = i64
    lib.pk_mask.argtypes = [ptr, i64, ctypes.c_uint32, i64, ptr, ptr, i64, ptr, ptr, i64]
    lib.pk_zero.restype = None
    lib.pk_block_expand.restype = i64
    lib.pk_block_expand.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr, i64]
    lib.pk_zero.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64]
    lib.pk_groups.restype = i64
    lib.pk_groups.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr]
    lib.pk_banks.restype = i64
    lib.pk_banks.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr]
    f32 = ctypes.c_float
    lib.pk_adam.restype = None
    lib.pk_adam.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, f32, f32, f32, f32, f32, f32, f32, f32, ctypes.c_int,
                            ctypes.c_int]
    lib.pk_sgd.restype = None
    lib.pk_sgd.argtypes = [ptr, ptr, ptr, ptr, i64, f32, f32, f32, f32, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.pk_block_scores.restype = i64
    lib.pk_block_scores.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr]
    lib.pk_block_select.restype = i64
    lib.pk_block_select.argtypes = [ptr, i64, ptr, i64, ptr]
    return lib


def kernels():
    """The loaded kernels, or None where they cannot be used (see the module doc); built at the first call."""
    with _lock:
        if "kernels" not in _loaded:
            _loaded["kernels"] = _load()
        return _loaded["kernels"]


def _pool(threads):
    key = (os.getpid(), threads)  # a forked child has none of its parent's threads: it makes its own pool
    with _lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="prunekit-native")
        return _pools[key]


def _pointers(arrays, start=0):
    """A C array of the addresses of ``arrays`` (4-byte entries) from entry ``start`` on."""
    return (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data + 4 * start for a in arrays])


def _select_one(lib, keys, count, prior, out, zero=(), fresh=()):
    """Fill ``out`` with the mask of ``keys`` after pruning its ``count`` lowest, and zero the entries it
    prunes in the arrays ``zero``, and those it prunes and ``prior`` kept in the arrays ``fresh``; False
    (nothing written) when the caller's exact path must decide."""
    n = keys.size
    hist = getattr(_local, "hist", None)
    if hist is None:
        hist = _local.hist = np.zeros(_BINS, np.uint32)
    size = -(-n // SAMPLE_STRIDE)
    r_lo, r_hi = sample_ranks(size, n, count)
    res = np.zeros(3, np.int64)
    lib.pk_bracket(keys.ctypes.data, n, SAMPLE_STRIDE, r_lo, r_hi, hist.ctypes.data, res.ctypes.data)
    low, high, in_sample = (int(v) for v in res)
    prior_ptr = None if prior is None else prior.ctypes.data
    if low > high:
        return _prior_again(lib, keys, count, prior, out, zero)
    cap = int(in_sample * n / size * 1.25) + 1024
    while True:
        positions, values = np.empty(cap, np.int64), np.empty(cap, np.uint32)
        inside = lib.pk_scan(keys.ctypes.data, n, prior_ptr, low, high, positions.ctypes.data,
                             values.ctypes.data, cap, res.ctypes.data)
        if inside <= cap:
            break
        cap = inside  # more than the sample promised: once more with room for all
    below, odd = int(res[0]), int(res[1])
    if odd or not below < count <= below + inside:
        return not odd and _prior_again(lib, keys, count, prior, out, zero)
    threshold, staying = rank_band(values[:inside], positions[:inside], count - below)
    cut = int(staying[0]) if len(staying) else n
    kept = lib.pk_mask(keys.ctypes.data, n, int(threshold), cut, out.ctypes.data, _pointers(zero), len(zero),
                       prior_ptr, _pointers(fresh), len(fresh))
    if kept != n - count:
        raise RuntimeError(f"prunekit: native prune event kept {kept} of {n} entries, expected {n - count} "
                           "(please report this)")
    return True


def _prior_again(lib, keys, count, prior, out, zero):
    """When ``count`` is what ``prior`` pruned (a late event of a ramp, on a tensor too small for its count
    to grow), the mask is ``prior``: the reference prunes the entries pruned before first. The sample
    brackets no threshold then (it lies among the zeros); this decides it instead of the caller's exact
    path, zeroing the arrays ``zero`` (arrays known to be zero under the prior need nothing). False when
    that is not the case, or an entry is NaN or inf, or pruned before and not 0.0."""
    n = keys.size
    if prior is None or count != n - int(np.count_nonzero(prior)):
        return False
    res = np.zeros(3, np.int64)
    lib.pk_scan(keys.ctypes.data, n, prior.ctypes.data, 1, 1, None, None, 0, res.ctypes.data)
    if res[1]:
        return False
    np.copyto(out, prior)
    if zero:
        lib.pk_zero(out.ctypes.data, n, _pointers(zero), len(zero), None, None, 0)
    return True


def _share(order, call, threads):
    """``call(i)`` for every ``i`` of ``order`` on ``threads`` threads (this one and ``threads - 1`` of the
    pool), each taking the next ``i`` when it finishes one: a handful of hand-offs however many jobs (a
    submit per job cost ~0.2 ms of GIL hand-off here, more than a small tensor's work). The first error is
    raised once every thread has stopped."""
    if threads <= 1 or len(order) <= 1:
        for i in order:
            call(i)
        return
    it = iter(order)

    def worker():
        for i in it:
            call(i)

    futures = [_pool(threads).submit(worker) for _ in range(min(threads, len(order)) - 1)]
    error = None
    try:
        worker()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the pool's threads stop
        error = e
        for _ in it:  # the pool's threads take nothing more
            pass
    for f in futures:
        try:
            f.result()
        except BaseException as e:  # noqa: BLE001
            error = error or e
    if error is not None:
        raise error


def _run(jobs, work, threads):
    """``work(lib, *job)`` for every job, the largest first (an even split), on ``threads`` threads."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("prunekit: the native kernels are not available here (see prunekit.core.native)")
    done = [None] * len(jobs)

    def call(i):
        done[i] = work(lib, *jobs[i])

    _share(sorted(range(len(jobs)), key=lambda i: -jobs[i][0].size), call, threads)
    return done


def _check(i, w, out, prior):
    """Weights C-contiguous float32; ``out`` (if given) and ``prior`` (if given) C-contiguous uint8 of the
    same shape."""
    bad = [a for a in (out, prior) if a is not None
           and (a.dtype != np.uint8 or a.shape != w.shape or not a.flags.c_contiguous)]
    if w.dtype != np.float32 or not w.flags.c_contiguous or bad:
        raise ValueError(f"prunekit: native kernels got an unusable tensor #{i} (dtype {w.dtype}, shape {w.shape}"
                         + "".join(f", mask {a.dtype} {a.shape}" for a in bad) + "); expected C-contiguous float32 "
                         "weights and uint8 masks of the same shape")


def _check_zero(i, size, arrays):
    for a in arrays:
        if a.dtype.itemsize != 4 or a.size != size or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"prunekit: native kernels got an unusable array to zero with mask #{i} ({a.dtype}, "
                             f"shape {a.shape}); expected writable C-contiguous 4-byte entries, {size} of them")


def select_masks(weights, counts, priors, outs, threads=1, zero=None, fresh=None):
    """Masks of unstructured tensors, computed by the native kernels (:func:`kernels` must not be None).

    ``weights``: 1-D C-contiguous float32 arrays; ``counts``: how many entries to prune in each
    (``0 < count < size``); ``priors``: None or one uint8 array per weight (1 = kept at the previous
    event, whose pruned entries must be 0.0 now); ``outs``: uint8 arrays of the weights' sizes to write
    the masks into (1 = kept); ``zero``: None or, per weight, a list of arrays of its size (4-byte entries,
    e.g. the weight itself, its gradient, its optimizer state) whose pruned entries become +0.0 in the same
    pass; ``fresh``: None or, per weight, arrays as ``zero`` that are 0.0 already wherever its prior prunes
    (it must have one): only the entries pruned now for the first time are written (see ``fresh_span`` in
    select.c). Returns one bool per tensor: True if its mask was written (and its arrays zeroed), False if the
    caller must decide it (an unlucky sample, a threshold among zeros, NaN or inf, a pruned entry that is
    not 0.0); then nothing of it was written.
    """
    jobs = []
    for i, (w, count, out) in enumerate(zip(weights, counts, outs)):
        prior = None if priors is None else priors[i]
        _check(i, w, out, prior)
        if w.ndim != 1 or not 0 < count < w.size:
            raise ValueError(f"prunekit: select_masks got tensor #{i} of shape {w.shape} with count {count}; "
                             "expected 1-D with 0 < count < size")
        arrays = [] if zero is None else list(zero[i])
        known = _fresh_arrays(i, fresh, prior)
        _check_zero(i, w.size, arrays + known)
        jobs.append((w.view(np.uint32), int(count), prior, out, arrays, known))
    return _run(jobs, _select_one, threads)


def _fresh_arrays(i, fresh, prior):
    known = [] if fresh is None else list(fresh[i])
    if known and prior is None:
        raise ValueError(f"prunekit: native kernels got arrays to zero where mask #{i} prunes anew but no "
                         "previous mask to tell which entries those are")
    return known


def _groups_one(lib, keys, group_size, count, prior, out):
    blocks = keys.shape[0] * (keys.shape[1] // group_size)
    spatial = keys[0, 0].size
    args = (keys.ctypes.data, blocks, group_size, spatial, None if prior is None else prior.ctypes.data, count,
            out.ctypes.data)
    if group_size <= 8:  # every pair compared, 8 groups per instruction
        odd = lib.pk_groups(*args)
    else:  # a selection per group
        scratch = getattr(_local, "scratch", None)
        need = group_size + -(-group_size * _CHUNK * 6 // 8)  # see pk_banks
        if scratch is None or scratch.size < need:
            scratch = _local.scratch = np.empty(need, np.uint64)
        odd = lib.pk_banks(*args, scratch.ctypes.data)
    return odd == 0


def group_masks(weights, group_sizes, counts, priors, outs, threads=1):
    """Masks of N:M groups and banks (the native kernels must be available).

    ``weights``: C-contiguous float32 arrays ``(out, in, *spatial)``; a group is ``group_sizes[i]``
    consecutive entries of the input axis (axis 1) at one output and spatial position. In each group
    ``counts[i]`` entries are pruned, or all that were pruned before (``priors``: None or uint8 arrays,
    1 = kept) if more: those first, then the lowest magnitudes, equal ones at the lower index first
    (the reference's rule). ``outs``: uint8 arrays of the weights' shapes for the masks. Returns one bool
    per tensor: False where a weight holds NaN or inf (its mask is not usable; the caller decides).
    """
    jobs = []
    for i, (w, m, count, out) in enumerate(zip(weights, group_sizes, counts, outs)):
        prior = None if priors is None else priors[i]
        _check(i, w, out, prior)
        if w.ndim < 2 or m < 2 or w.shape[1] % m or not 0 <= count <= m:
            raise ValueError(f"prunekit: group_masks got tensor #{i} of shape {w.shape} with groups of {m} and "
                             f"count {count}; expected a group size >= 2 dividing axis 1 and 0 <= count <= size")
        jobs.append((w.view(np.uint32), int(m), int(count), prior, out))
    return _run(jobs, _groups_one, threads)


def _block_one(lib, w, r, c, prior):
    rows, cols, spatial = w.shape[0], w.shape[1], w[0, 0].size
    scores = np.empty(spatial * (rows // r) * (cols // c), np.float64)
    kept = None if prior is None else np.empty(scores.size, np.uint8)
    if lib.pk_block_scores(w.ctypes.data, rows, cols, spatial, r, c, None if prior is None else prior.ctypes.data,
                           scores.ctypes.data, None if kept is None else kept.ctypes.data) < 0:
        raise MemoryError(f"prunekit: no memory for the block scores of a {w.shape} weight")
    return scores, kept


def block_scores(weights, blocks, priors, threads=1):
    """Scores of ``Block(r, c)`` patterns, as :func:`prunekit.core.masks.to_scores` computes them.

    ``weights``: C-contiguous float32 arrays ``(out, in, *spatial)``; ``blocks``: ``(r, c)`` per weight,
    dividing ``out`` and ``in``. Returns per weight ``(scores, kept)``: the float64 sums of squares of
    the blocks of every spatial position's ``(out, in)`` plane, in the reference's order (spatial
    position, block row, block column), NaN or inf where an entry is; and, where ``priors`` (None, or a
    list of uint8 arrays, 1 = kept, or None) has one, a uint8 array, 1 where a block kept an entry
    before (else None).
    """
    jobs = []
    for i, (w, (r, c)) in enumerate(zip(weights, blocks)):
        prior = None if priors is None else priors[i]
        _check(i, w, None, prior)
        if w.ndim < 2 or r < 1 or c < 1 or w.shape[0] % r or w.shape[1] % c:
            raise ValueError(f"prunekit: block_scores got tensor #{i} of shape {w.shape} with blocks {r}x{c}; "
                             "expected blocks dividing axes 0 and 1")
        jobs.append((w, int(r), int(c), prior))
    return _run(jobs, _block_one, threads)


def block_select(scores, counts, befores, threads=1):
    """Block decisions (uint8, 1 = stays) from :func:`block_scores`' results: in each ``scores[i]`` (float64,
    finite, >= 0) ``counts[i]`` blocks go: those whose ``befores[i]`` (None, or uint8 with 1 where the block
    kept an entry before) is 0 first, all of them even if more, then the lowest scores, equal ones at the
    lower index first, as :func:`prunekit.core.masks.reference_mask` decides."""
    jobs = []
    for i, (sc, count) in enumerate(zip(scores, counts)):
        before = None if befores is None else befores[i]
        if (sc.dtype != np.float64 or sc.ndim != 1 or not sc.flags.c_contiguous or not 0 <= count <= sc.size
                or (before is not None and (before.dtype != np.uint8 or before.shape != sc.shape))):
            raise ValueError(f"prunekit: block_select got scores #{i} ({sc.dtype}, shape {sc.shape}) with count "
                             f"{count}; expected 1-D C-contiguous float64 scores, 0 <= count <= size and uint8 "
                             "flags of the same shape")
        jobs.append((sc, int(count), None if before is None else np.ascontiguousarray(before)))

    def work(lib, sc, count, before):
        out = np.empty(sc.size, np.uint8)
        if lib.pk_block_select(sc.ctypes.data, sc.size, None if before is None else before.ctypes.data, count,
                               out.ctypes.data) < 0:
            raise MemoryError(f"prunekit: no memory to select among {sc.size} block scores")
        return out

    return _run(jobs, work, threads)


def block_expand(kept, blocks, priors, outs, zero=None, threads=1, fresh=None):
    """Entry masks from block decisions (:func:`block_scores`' order), one job per tensor: ``kept[i]``
    uint8 (1 = the block stays), ``blocks[i]`` its ``(r, c)``, ``priors``: None or uint8 entry masks to AND
    with, ``outs[i]``: C-contiguous uint8 arrays ``(out, in, *spatial)`` to write; ``zero``: None or, per
    tensor, arrays of its size (4-byte entries) that get +0.0 where the mask is 0, in the same pass;
    ``fresh``: None or, per tensor, arrays 0.0 already where its prior is 0, zeroed only where the prior
    kept and the mask prunes (:func:`zero_where`). Returns how many entries each mask keeps."""
    jobs = []
    for i, (k, (r, c), out) in enumerate(zip(kept, blocks, outs)):
        prior = None if priors is None else priors[i]
        rows, cols = out.shape[0], out.shape[1]
        spatial = out[0, 0].size
        if (out.dtype != np.uint8 or not out.flags.c_contiguous or rows % r or cols % c
                or k.dtype != np.uint8 or k.size != spatial * (rows // r) * (cols // c)
                or (prior is not None and (prior.dtype != np.uint8 or prior.size != out.size or not prior.flags.c_contiguous))):
            raise ValueError(f"prunekit: block_expand got an unusable tensor #{i} (mask {out.dtype} {out.shape}, "
                             f"{k.size} block decisions of {r}x{c})")
        arrays = [] if zero is None else list(zero[i])
        known = _fresh_arrays(i, fresh, prior)
        _check_zero(i, out.size, arrays + known)
        jobs.append((out, np.ascontiguousarray(k), int(r), int(c), prior, arrays, known))

    def work(lib, out, k, r, c, prior, arrays, known):
        stay = lib.pk_block_expand(k.ctypes.data, out.shape[0], out.shape[1], out[0, 0].size, r, c,
                                   None if prior is None else prior.ctypes.data, out.ctypes.data,
                                   _pointers(arrays), len(arrays), _pointers(known), len(known))
        if stay < 0:
            raise MemoryError(f"prunekit: block_expand could not allocate {out[0].size} bytes")
        return stay

    return _run(jobs, work, threads)


_SPLIT = 1 << 20  # entries per job of an update or a zeroing: big tensors split, so two threads share them evenly


def _parallel(jobs, work, threads):
    _share(range(len(jobs)), lambda i: work(jobs[i]), threads)


def zero_where(masks, arrays, threads=1, priors=None, fresh=None):
    """For each ``masks[i]`` (uint8, 1 = kept), ``+0.0`` in every array of ``arrays[i]`` where the mask is 0
    (4-byte entries, C-contiguous, the mask's size), in place: one pass over memory per mask, however many
    arrays share it (:func:`kernels` must not be None). ``fresh``: None or, per mask, arrays as ``arrays``
    that are 0.0 already wherever ``priors[i]`` (uint8, the previous mask) is 0: they get +0.0 only where
    the mask is 0 and the prior 1, and only the cache lines holding such an entry are written."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("prunekit: the native kernels are not available here (see prunekit.core.native)")
    jobs = []
    for i, (mask, group) in enumerate(zip(masks, arrays)):
        prior = None if priors is None else priors[i]
        for what, m in (("mask", mask), ("previous mask", prior)):
            if m is not None and (m.dtype != np.uint8 or not m.flags.c_contiguous or m.size != mask.size):
                raise ValueError(f"prunekit: zero_where got {what} #{i} of dtype {m.dtype} and size {m.size}; "
                                 f"expected C-contiguous uint8 of size {mask.size}")
        group, known = list(group), _fresh_arrays(i, fresh, prior)
        _check_zero(i, mask.size, group + known)
        if group or known:
            jobs.extend((mask, group, prior, known, a, min(mask.size, a + _SPLIT)) for a in range(0, mask.size, _SPLIT))

    def work(job):
        mask, group, prior, known, a, b = job
        lib.pk_zero(mask.ctypes.data + a, b - a, _pointers(group, a), len(group),
                    None if prior is None else prior.ctypes.data + a, _pointers(known, a), len(known))

    _parallel(jobs, work, threads)


def _update_jobs(tensors, hyper):
    """Jobs of at most ``_SPLIT`` entries (two threads share a big tensor evenly), the arrays checked."""
    jobs = []
    for i, (arrays, h) in enumerate(zip(tensors, hyper)):
        *floats, mask, zero_grad = arrays
        w = floats[0]
        for a in floats:
            if a is not None and (a.dtype != np.float32 or a.size != w.size or not a.flags.c_contiguous
                                  or not a.flags.writeable):
                raise ValueError(f"prunekit: an update got an unusable array for tensor #{i} ({a.dtype}, shape "
                                 f"{a.shape}); expected writable C-contiguous float32 of {w.size} entries")
        if mask is not None and (mask.dtype != np.uint8 or mask.size != w.size or not mask.flags.c_contiguous):
            raise ValueError(f"prunekit: an update got mask #{i} of dtype {mask.dtype} and size {mask.size}; "
                             f"expected C-contiguous uint8 of size {w.size}")
        for start in range(0, w.size, _SPLIT):
            jobs.append((floats, mask, bool(zero_grad) and mask is not None, start, min(w.size, start + _SPLIT), h))
    return jobs


def _addr(a, start):
    return None if a is None else a.ctypes.data + a.itemsize * start


def sgd_steps(tensors, hyper, threads=1):
    """One SGD step for each ``(w, g, momentum buffer or None, mask or None, zero_grad)``: C-contiguous
    float32 arrays, a uint8 mask (1 = kept; weights and buffer come out +0.0 where it is 0, and the
    gradient too with ``zero_grad``), in place. ``hyper``: one dict per tensor with ``weight_decay,
    momentum, dampening, lr, nesterov, maximize`` (``momentum`` 0: the buffer, if given, is only masked;
    see ``pk_sgd`` in ``_native/select.c`` for the arithmetic, torch's single-tensor SGD's)."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("prunekit: the native kernels are not available here (see prunekit.core.native)")

    def work(job):
        (w, g, b), mask, zero_grad, a, z, h = job
        if h["momentum"] != 0 and b is None:
            raise ValueError("prunekit: an SGD update with momentum needs its momentum buffer")
        lib.pk_sgd(_addr(w, a), _addr(g, a), _addr(b, a), _addr(mask, a), z - a, h["weight_decay"], h["momentum"],
                   1.0 - h["dampening"], -h["lr"], int(h["nesterov"]), int(h["maximize"]), int(zero_grad))

    _parallel(_update_jobs(tensors, hyper), work, threads)


def adam_steps(tensors, hyper, threads=1):
    """One Adam/AdamW step for each ``(w, g, m, v, mask or None, zero_grad)`` of C-contiguous float32 arrays
    (uint8 mask, as :func:`sgd_steps`'), in place. ``hyper``: one dict per tensor with ``decay_mul, l2,
    beta1, beta2, neg_step, bc2_sqrt, eps, maximize`` (see ``pk_adam`` in ``_native/select.c``)."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("prunekit: the native kernels are not available here (see prunekit.core.native)")

    def work(job):
        (w, g, m, v), mask, zero_grad, a, z, h = job
        lib.pk_adam(_addr(w, a), _addr(g, a), _addr(m, a), _addr(v, a), _addr(mask, a), z - a,
                    h["decay_mul"], h["l2"], 1.0 - h["beta1"], h["beta2"], 1.0 - h["beta2"], h["neg_step"],
                    h["bc2_sqrt"], h["eps"], int(h["maximize"]), int(zero_grad))

    _parallel(_update_jobs(tensors, hyper), work, threads)
