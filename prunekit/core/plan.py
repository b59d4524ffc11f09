"""Which tensors are pruned, to which target, in which pattern: names + shapes + options -> a Plan.

Rules (SPEC.md, "The plan"):
- by default a tensor is prunable when it has >= 2 dims, its name contains no ``keywords_no_sparse``
  entry, and the pattern fits its shape; one that does not fit stays dense with a warning naming it;
- ``special_sparsity_dict`` sets per-tensor targets. An exact name applies even to a tensor the
  default rules would leave dense (and it is an error if the pattern cannot fit it); a glob pattern
  (``layer4.*.weight``) applies to the default-prunable tensors it matches. A target of 0 keeps a
  tensor dense. An exact name beats a glob; among globs the first listed wins. A key that matches
  nothing is an error that names the closest parameter names.
"""

import difflib
import fnmatch
import warnings
from dataclasses import dataclass

from prunekit.core.patterns import Pattern, Unstructured, erk_targets
from prunekit.errors import PlanError

__all__ = ["TensorSpec", "Plan", "resolve_plan"]

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class TensorSpec:
    """One prunable tensor: its name, canonical shape, final sparsity and pattern."""

    name: str
    shape: tuple
    target: float
    pattern: Pattern

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Plan:
    """The resolved plan: ``specs`` are pruned, ``dense`` lists ``(name, shape, reason)`` left alone."""

    specs: tuple
    dense: tuple

    def __len__(self):
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    @property
    def names(self):
        return [s.name for s in self.specs]

    def __getitem__(self, name):
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def __str__(self):
        rows = [("name", "shape", "target", "pattern")]
        rows += [(s.name, "x".join(map(str, s.shape)), f"{s.target:.4f}", s.pattern.describe()) for s in self.specs]
        small = [d for d in self.dense if d[2] == "fewer than 2 dims"]
        rows += [(name, "x".join(map(str, shape)), "dense", reason) for name, shape, reason in self.dense
                 if (name, shape, reason) not in small]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if small:
            lines.append(f"(+ {len(small)} tensors with fewer than 2 dims, biases and norms, stay dense)")
        total = sum(s.numel for s in self.specs)
        lines.append(f"{len(self.specs)} prunable tensors, {total} elements; {len(self.dense)} dense")
        return "\n".join(lines)


def _unknown_key_error(key, names):
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(key.replace("_", "."), names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"; parameter names look like {', '.join(repr(n) for n in names[:3])}"
    return PlanError(f"special_sparsity_dict key {key!r} matches no parameter{hint}")


def _default_reason(name, shape, keywords):
    if len(shape) < 2:
        return "fewer than 2 dims"
    for word in keywords:
        if word in name:
            return f"name contains {word!r}"
    return None


def _match_special(names, special, default_reason):
    """name -> (target, explicit?) for every parameter a special_sparsity_dict key reaches.

    A glob reaches only default-prunable tensors; one that matches names but none of those would do
    nothing, so it is an error that says why (name them exactly to prune them anyway).
    """
    result = {}
    for key, target in special.items():
        if not (_GLOB_CHARS & set(key)):
            if key not in names:
                raise _unknown_key_error(key, names)
            result[key] = (target, True)
    for key, target in special.items():
        if _GLOB_CHARS & set(key):
            hits = [n for n in names if fnmatch.fnmatchcase(n, key)]
            if not hits:
                raise _unknown_key_error(key, names)
            reachable = [n for n in hits if default_reason(n) is None]
            if not reachable:
                why = "; ".join(f"{n!r}: {default_reason(n)}" for n in hits[:3])
                raise PlanError(f"special_sparsity_dict key {key!r} matches only tensors that stay dense by default "
                                f"({why}{', ...' if len(hits) > 3 else ''}); a glob applies to prunable tensors "
                                "only: name a tensor exactly to prune it anyway, or change keywords_no_sparse")
            for n in reachable:
                result.setdefault(n, (target, False))
    return result


def resolve_plan(named_shapes, config, named=True):
    """Resolve ``[(name, canonical_shape), ...]`` and a :class:`PruneConfig` into a :class:`Plan`.

    Args:
        named_shapes: parameter names and shapes in the canonical ``(out, in, *spatial)`` layout.
        config: the validated pruning arguments.
        named: False when the names are placeholders because the user gave none; then any
            name-based option is an error.
    """
    if not named and config.needs_names:
        raise PlanError("keywords_no_sparse and special_sparsity_dict need parameter names: pass "
                        "param_name=model.named_parameters() or the named parameters themselves as params")
    names = [n for n, _ in named_shapes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlanError(f"parameter names must be unique; repeated: {duplicates}")
    shapes = dict(named_shapes)
    special = _match_special(names, config.special_sparsity_dict,
                             lambda n: _default_reason(n, tuple(shapes[n]), config.keywords_no_sparse))
    specs, dense = [], []
    for name, shape in named_shapes:
        shape = tuple(int(d) for d in shape)
        reason = _default_reason(name, shape, config.keywords_no_sparse)
        target, explicit = special.get(name, (config.target_sparsity, False))
        if reason is not None and not explicit:
            dense.append((name, shape, reason))
            continue
        if target == 0.0 and (name in special or not (config.restore_sparsity or config.L1_regularization)):
            # with restore_sparsity a target of 0 still keeps the zeros a loaded model already has,
            # and L1_regularization still pulls the prunable tensors toward zero
            dense.append((name, shape, "target 0"))
            continue
        pattern = config.pattern
        if (pattern.is_global or pattern.is_budget) and name in special:
            pattern = Unstructured()
        problem = pattern.check(shape)
        if problem is not None:
            if explicit:
                raise PlanError(f"{name!r}: {problem}; choose another pattern or remove it from "
                                "special_sparsity_dict")
            warnings.warn(f"prunekit: {name!r} stays dense: {problem}", stacklevel=3)
            dense.append((name, shape, "pattern does not fit"))
            continue
        specs.append(TensorSpec(name, shape, target, pattern))
    budget = [s for s in specs if s.pattern.is_budget]
    if budget:  # ERK: one target split across these tensors; one whose share is 0 stays dense
        targets = erk_targets({s.name: s.shape for s in budget}, config.target_sparsity)
        kept_dense = {s.name for s in budget if targets[s.name] == 0.0 and not config.restore_sparsity}
        dense += [(s.name, s.shape, f"{s.pattern!r} keeps it dense") for s in budget if s.name in kept_dense]
        specs = [TensorSpec(s.name, s.shape, targets[s.name], s.pattern) if s.pattern.is_budget else s
                 for s in specs if s.name not in kept_dense]
    return Plan(tuple(specs), tuple(dense))
