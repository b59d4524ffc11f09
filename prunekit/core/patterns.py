"""How zeros are placed in a tensor.

Every pattern works on a weight in the *canonical layout* ``(out, in, *spatial)`` (PyTorch's conv and
linear layout). Adapters whose frameworks store kernels otherwise (Keras ``(kh, kw, in, out)``) move
axes into it first. A pattern turns a weight into a matrix of scores, one row per *group*; the same
number of entries is pruned in every row (see :mod:`prunekit.core.masks`). The recipe for that matrix
is a :class:`Layout`: plain data, so numpy, torch, TF and MXNet each follow it with their own ops.
"""

from dataclasses import dataclass

from prunekit.core import _validate
from prunekit.errors import ConfigError

__all__ = ["channels_last_kernel_perm", "Layout", "Pattern", "Unstructured", "Global", "ERK", "BankBalanced", "NM", "Block",
           "from_sparse_block", "parse_pattern"]


def channels_last_kernel_perm(ndim):
    """Axes moving a kernel stored ``(..., in, out)`` (Keras, TF: ``(in, out)``, ``(kh, kw, in, out)``) into
    the canonical ``(out, in, *spatial)``."""
    if ndim <= 1:
        return tuple(range(ndim))
    return (ndim - 1, ndim - 2) + tuple(range(ndim - 2))


@dataclass(frozen=True)
class Layout:
    """How to turn a canonical weight into a ``(groups, group_size)`` score matrix.

    Attributes:
        perm: axes order applied to the weight first.
        block: ``(r, c)`` to sum squared values over ``r x c`` blocks of the last two permuted axes
            (``out, in``), or ``None`` to score elements by ``|w|``.
        group_size: entries per group, or ``None`` for a single group holding the whole tensor.
    """

    perm: tuple
    block: tuple = None
    group_size: int = None


class Pattern:
    """Base class: a placement rule for zeros. Subclasses are small immutable values."""

    #: Sparsity the pattern always ends at (N:M), or None when any target is accepted.
    fixed_sparsity = None
    #: Whether one threshold is shared across all tensors using the pattern.
    is_global = False
    #: Whether the plan splits one target across the tensors using the pattern (:class:`ERK`).
    is_budget = False

    def check(self, shape):
        """Return ``None`` if the pattern fits a canonical ``shape``, else a sentence saying why not."""
        return None

    def layout(self, shape):
        """The :class:`Layout` for a canonical ``shape`` (which must fit)."""
        return Layout(perm=tuple(range(len(shape))))

    def describe(self):
        return repr(self)

    def spec(self):
        """The short string :func:`parse_pattern` reads back (for configs and command lines)."""
        raise NotImplementedError(type(self).__name__)

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Unstructured(Pattern):
    """Keep the largest ``|w|`` of each tensor, each tensor at its own target."""

    def __repr__(self):
        return "Unstructured()"

    def spec(self):
        return "unstructured"


class Global(Pattern):
    """One magnitude threshold across every tensor that uses this pattern (their total hits the target).

    Tensors given their own target in ``special_sparsity_dict`` are pruned per tensor instead.
    """

    is_global = True

    def __repr__(self):
        return "Global()"

    def spec(self):
        return "global"


class ERK(Pattern):
    """Unstructured, with one target split across the tensors that use this pattern by the
    Erdos-Renyi-Kernel rule (Evci et al., "Rigging the Lottery", ICML 2020, https://arxiv.org/abs/1911.11134).

    A tensor of canonical shape ``(out, in, *spatial)`` gets a density proportional to
    ``sum(shape) / prod(shape)`` (small layers stay denser), scaled so that the pruned entries of all of them
    together are exactly ``round(target * total)``; a tensor whose density would exceed 1 stays dense. The
    plan holds each tensor's resulting target (``prunekit.core.plan``). Tensors given their own target in
    ``special_sparsity_dict`` are pruned per tensor instead, as with :class:`Global`.
    """

    is_budget = True

    def __repr__(self):
        return "ERK()"

    def spec(self):
        return "erk"


def erk_targets(shapes, sparsity):
    """``{name: target}`` splitting ``sparsity`` over the canonical ``shapes`` (``{name: shape}``) by ERK.

    The kept counts are whole numbers summing exactly to ``total - round(sparsity * total)``: each tensor
    keeps ``floor(density * n)``, and the entries left over go one each to the largest remainders (ties to
    the earlier tensor). A target of 0.0 means the tensor stays dense.

    >>> t = erk_targets({"a": (64, 32, 3, 3), "b": (10, 64)}, 0.9)
    >>> round(t["a"], 4), round(t["b"], 4)
    (0.9313, 0.0)
    """
    import math

    from prunekit.core.masks import prune_count
    names = list(shapes)
    n = {k: math.prod(shapes[k]) for k in names}
    raw = {k: sum(shapes[k]) / n[k] for k in names}
    keep_total = sum(n.values()) - prune_count(sparsity, sum(n.values()))
    dense = set()
    while True:
        rest = [k for k in names if k not in dense]
        budget = keep_total - sum(n[k] for k in dense)
        eps = budget / sum(raw[k] * n[k] for k in rest) if rest else 0.0
        over = [k for k in rest if eps * raw[k] >= 1.0]
        if not over:
            break
        dense.update(over)  # making one dense raises eps, so every layer over 1 now stays over 1
    exact = {k: float(n[k]) if k in dense else eps * raw[k] * n[k] for k in names}
    kept = {k: min(n[k], math.floor(exact[k])) for k in names}
    left = keep_total - sum(kept.values())
    order = sorted((k for k in names if kept[k] < n[k]), key=lambda k: (-(exact[k] - kept[k]), names.index(k)))
    for k in order[:max(0, left)]:
        kept[k] += 1
    return {k: (n[k] - kept[k]) / n[k] for k in names}


def _input_axis_problem(pattern, shape, size):
    if len(shape) < 2:
        return f"{pattern!r} needs a tensor with an input axis (>= 2 dims); shape is {tuple(shape)}"
    if shape[1] % size:
        return (f"{pattern!r} needs the input axis (size {shape[1]}) divisible by {size}")
    return None


def _input_axis_last(shape):
    return (0,) + tuple(range(2, len(shape))) + (1,)


class BankBalanced(Pattern):
    """Every bank of ``bank_size`` consecutive input-axis entries keeps the same number of non-zeros.

    For a conv weight ``(out, in, kh, kw)`` a bank is ``bank_size`` consecutive input channels at one
    output channel and kernel position. Balanced banks give a sparse accelerator equal work per lane
    (the seed's ``balance='fix'``).
    """

    def __init__(self, bank_size=64):
        self.bank_size = _validate.positive_int("bank_size", bank_size)

    def __repr__(self):
        return f"BankBalanced(bank_size={self.bank_size})"

    def spec(self):
        return f"bank{self.bank_size}"

    def check(self, shape):
        return _input_axis_problem(self, shape, self.bank_size)

    def layout(self, shape):
        return Layout(perm=_input_axis_last(shape), group_size=self.bank_size)


class NM(Pattern):
    """N:M sparsity: *keep* ``n`` of every ``m`` consecutive input-axis entries.

    ``NM(2, 4)`` keeps 2 of 4 (50% sparse), the layout NVIDIA sparse tensor cores accelerate. Beware
    the opposite convention elsewhere: TF MOT's ``m_by_n=(2, 4)`` meant 2 *zeros* of every 4.
    """

    def __init__(self, n=2, m=4):
        self.n = _validate.positive_int("n", n)
        self.m = _validate.positive_int("m", m)
        if self.n >= self.m:
            raise ConfigError(f"NM(n, m) keeps n of every m, so n < m is needed; got NM({n}, {m})")

    @property
    def fixed_sparsity(self):
        return 1.0 - self.n / self.m

    def __repr__(self):
        return f"NM({self.n}, {self.m})"

    def spec(self):
        return f"{self.n}:{self.m}"

    def check(self, shape):
        return _input_axis_problem(self, shape, self.m)

    def layout(self, shape):
        return Layout(perm=_input_axis_last(shape), group_size=self.m)


class Block(Pattern):
    """Prune whole ``r x c`` blocks of the (output, input) plane, ranked by their L2 norm.

    For a conv weight, blocks are taken in the (out, in) plane of each kernel position.
    """

    def __init__(self, r=4, c=4):
        self.r = _validate.positive_int("r", r)
        self.c = _validate.positive_int("c", c)

    def __repr__(self):
        return f"Block({self.r}, {self.c})"

    def spec(self):
        return f"block{self.r}x{self.c}"

    def check(self, shape):
        if len(shape) < 2:
            return f"{self!r} needs a tensor with >= 2 dims; shape is {tuple(shape)}"
        if shape[0] % self.r or shape[1] % self.c:
            return (f"{self!r} needs the output axis (size {shape[0]}) divisible by {self.r} and the "
                    f"input axis (size {shape[1]}) divisible by {self.c}")
        return None

    def layout(self, shape):
        spatial = tuple(range(2, len(shape)))
        return Layout(perm=spatial + (0, 1), block=(self.r, self.c))


def from_sparse_block(sparse_block):
    """Map the seed's ``sparse_block`` dict onto a pattern.

    The seed described ``sparse_block`` as a hardware layout given per tensor rank, e.g.
    ``{'1d': [1], '2d': [1, 1], '4d': [-1, 4, -1, 1]}``; a ``1`` on every axis is element-wise
    (unstructured). A single entry ``k > 1`` on the input axis (index 1) means ``k`` consecutive input
    channels are kept or pruned together: :class:`Block` ``(1, k)``. (A bank-balanced reading cannot
    be what was meant: with banks of 4 a 95% target would prune every bank whole.) ``-1`` stands for
    "the whole axis" of the seed's notation and places no constraint.
    """
    if not isinstance(sparse_block, dict):
        raise ConfigError(f"sparse_block must be a dict like {{'2d': [1, 1], '4d': [-1, 4, -1, 1]}}; "
                          f"got {sparse_block!r}")
    sizes = set()
    for key, block in sparse_block.items():
        if key not in ("1d", "2d", "3d", "4d", "5d"):
            raise ConfigError(f"sparse_block key {key!r} is not one of '1d', '2d', '3d', '4d', '5d'")
        block = list(block)
        if len(block) != int(key[0]) or any(b != -1 and (not isinstance(b, int) or b < 1) for b in block):
            raise ConfigError(f"sparse_block[{key!r}] must list {key[0]} sizes (>= 1, or -1 for the whole "
                              f"axis); got {block!r}")
        others = [b for i, b in enumerate(block) if i != 1 and b not in (1, -1)]
        if others:
            raise ConfigError(f"sparse_block[{key!r}] = {block!r} groups entries along an axis other than "
                              "the input axis (index 1); prunekit maps only input-axis groups: use pattern=Block(r, c)")
        if len(block) > 1 and block[1] > 1:
            sizes.add(block[1])
    if not sizes:
        return Unstructured()
    if len(sizes) > 1:
        raise ConfigError(f"sparse_block asks for different input-axis group sizes {sorted(sizes)} per rank; "
                          "prunekit applies one pattern: pass pattern=Block(1, k)")
    return Block(1, sizes.pop())


def parse_pattern(value):
    """Accept a pattern object or a short string: 'unstructured', 'global', 'erk', 'bank16', '2:4', 'block4x4'."""
    if isinstance(value, Pattern):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"pattern must be a Pattern or a string such as 'unstructured', 'global', "
                          f"'bank64', '2:4', 'block4x4'; got {value!r}")
    text = value.strip().lower()
    if text == "unstructured":
        return Unstructured()
    if text == "global":
        return Global()
    if text == "erk":
        return ERK()
    try:
        if text.startswith("bank"):
            args, make = (text[4:],), BankBalanced
        elif ":" in text:
            args, make = text.split(":"), NM
        elif text.startswith("block"):
            args, make = text[5:].split("x"), Block
        else:
            args = None
        if args is not None:
            numbers = [int(a) for a in args]
    except ValueError:
        args = None
    if args is not None and len(numbers) in (1, 2):
        return make(*numbers)
    raise ConfigError(f"unknown pattern {value!r}; accepted: 'unstructured', 'global', 'erk', 'bank<B>' (e.g. "
                      "'bank64'), '<N>:<M>' (e.g. '2:4'), 'block<R>x<C>' (e.g. 'block4x4')")
