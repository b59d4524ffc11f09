"""The seed's pruning arguments, validated once and shared by every framework adapter."""

from dataclasses import dataclass, field

from prunekit.core import _validate
from prunekit.core.patterns import Pattern, Unstructured, from_sparse_block, parse_pattern
from prunekit.core.schedule import Schedule
from prunekit.errors import ConfigError, PrunekitTypeError

__all__ = ["PruneConfig", "DEFAULT_KEYWORDS", "PRUNE_ARGUMENTS", "METHODS", "SR_STE_DECAY"]

DEFAULT_KEYWORDS = ("bias", "beta", "gamma")

#: Every keyword a pruning optimizer accepts on top of its base optimizer's own.
PRUNE_ARGUMENTS = ("target_sparsity", "pretrain_step", "sparse_step", "frequency", "init_sparsity",
                   "keywords_no_sparse", "special_sparsity_dict", "sparse_block", "pattern",
                   "restore_sparsity", "resume", "fix_sparsity", "L1_regularization", "l1_strength",
                   "exponent", "method", "sr_ste_decay")

#: How masks are chosen and what pruned entries receive (see docs/spec.md, "Methods"):
#: ``"magnitude"`` prunes the smallest weights and keeps pruned entries, their gradients and state at 0;
#: ``"feedback"`` (Lin et al., ICLR 2020) keeps the dense weights in the optimizer state, updates them with
#: the gradients computed at the masked weights, and re-selects masks from them at every event, so pruned
#: entries can regrow; ``"sr-ste"`` (Zhou et al., ICLR 2021) is feedback plus a decay of the pruned entries.
METHODS = ("magnitude", "feedback", "sr-ste")
#: The SR-STE paper's decay of the pruned entries of the dense weights (lambda_W = 2e-4).
SR_STE_DECAY = 2e-4


def _keywords(value):
    if isinstance(value, str):
        raise PrunekitTypeError(f"keywords_no_sparse must be a list of substrings, not one string; got "
                                f"{value!r} (did you mean [{value!r}]?)")
    try:
        words = tuple(value)
    except TypeError:
        raise PrunekitTypeError(f"keywords_no_sparse must be a list of strings; got {value!r}") from None
    bad = [w for w in words if not isinstance(w, str) or not w]
    if bad:
        raise PrunekitTypeError(f"keywords_no_sparse entries must be non-empty strings; got {bad!r}")
    return words


def _special(value, pattern):
    if not isinstance(value, dict):
        raise PrunekitTypeError(f"special_sparsity_dict must be a dict of name -> sparsity; got {value!r}")
    checked = {}
    for key, sparsity in value.items():
        if not isinstance(key, str) or not key:
            raise PrunekitTypeError(f"special_sparsity_dict keys must be parameter names or glob patterns; "
                                    f"got {key!r}")
        checked[key] = _validate.sparsity(f"special_sparsity_dict[{key!r}]", sparsity)
        fixed = pattern.fixed_sparsity
        if fixed is not None and checked[key] not in (0.0, fixed):
            raise ConfigError(f"{pattern!r} always ends at sparsity {fixed}; special_sparsity_dict[{key!r}] = "
                              f"{sparsity!r} disagrees (use {fixed} or 0 to keep it dense)")
    return checked


@dataclass(frozen=True)
class PruneConfig:
    """Validated pruning arguments (see SPEC.md). Build it with :meth:`from_kwargs`."""

    target_sparsity: float = 0.0
    schedule: Schedule = field(default_factory=Schedule)
    init_sparsity: float = 0.0
    keywords_no_sparse: tuple = DEFAULT_KEYWORDS
    special_sparsity_dict: dict = field(default_factory=dict)
    pattern: Pattern = field(default_factory=Unstructured)
    restore_sparsity: bool = False
    fix_sparsity: bool = False
    L1_regularization: bool = False
    l1_strength: float = 1e-5
    method: str = "magnitude"
    sr_ste_decay: float = 0.0
    #: True when the user chose an option that needs parameter names.
    needs_names: bool = False

    @classmethod
    def from_kwargs(cls, target_sparsity=None, pretrain_step=0, sparse_step=0, frequency=100,
                    init_sparsity=0.0, keywords_no_sparse=None, special_sparsity_dict=None,
                    sparse_block=None, pattern=None, restore_sparsity=False, resume=None,
                    fix_sparsity=False, L1_regularization=False, l1_strength=None, exponent=3.0,
                    method="magnitude", sr_ste_decay=None):
        """Validate the seed's arguments; every bad value raises with the value and what is accepted.

        >>> c = PruneConfig.from_kwargs(target_sparsity=0.9, sparse_step=1000, frequency=250.7)
        >>> c.schedule.frequency, c.pattern
        (250, Unstructured())
        """
        if pattern is not None and sparse_block is not None:
            raise ConfigError("pass either pattern= or the seed's sparse_block=, not both")
        pattern = parse_pattern(pattern) if pattern is not None else (
            from_sparse_block(sparse_block) if sparse_block is not None else Unstructured())
        if resume is not None:
            restore_sparsity = restore_sparsity or _validate.flag("resume", resume)
        if target_sparsity is None:
            target_sparsity = pattern.fixed_sparsity or 0.0
        target = _validate.sparsity("target_sparsity", target_sparsity)
        if pattern.fixed_sparsity is not None and target not in (0.0, pattern.fixed_sparsity):
            raise ConfigError(f"{pattern!r} always ends at sparsity {pattern.fixed_sparsity}; "
                              f"target_sparsity={target_sparsity!r} disagrees (leave it unset)")
        init = _validate.sparsity("init_sparsity", init_sparsity)
        if init > target and target > 0:
            raise ConfigError(f"init_sparsity ({init}) must not exceed target_sparsity ({target}): "
                              "sparsity only rises during a schedule")
        restore = restore_sparsity
        if fix_sparsity is True and not restore and int(sparse_step or 0) > 0 and target > 0:
            # the first event would prune to init_sparsity and freeze there: the ramp could never run
            raise ConfigError(f"fix_sparsity=True freezes the masks at the first prune event, so the ramp "
                              f"(sparse_step={sparse_step!r}) to target_sparsity={target} would stop at "
                              f"init_sparsity={init}; to keep a loaded model's zeros pass restore_sparsity=True, "
                              "to prune once to the target and then freeze pass sparse_step=0")
        if l1_strength is not None and not L1_regularization:
            raise ConfigError(f"l1_strength={l1_strength!r} has no effect unless L1_regularization=True")
        strength = 1e-5 if l1_strength is None else l1_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength > 0:
            raise ConfigError(f"l1_strength must be a number > 0; got {strength!r}")
        if not isinstance(method, str) or method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}; got {method!r}")
        if sr_ste_decay is not None and method != "sr-ste":
            raise ConfigError(f"sr_ste_decay={sr_ste_decay!r} has no effect unless method='sr-ste' (method={method!r})")
        decay = SR_STE_DECAY if sr_ste_decay is None else sr_ste_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay >= 0 or decay == float("inf"):
            raise ConfigError(f"sr_ste_decay must be a finite number >= 0; got {decay!r}")
        return cls(
            target_sparsity=target,
            schedule=Schedule(pretrain_step, sparse_step, frequency, exponent),
            init_sparsity=init,
            keywords_no_sparse=DEFAULT_KEYWORDS if keywords_no_sparse is None else _keywords(keywords_no_sparse),
            special_sparsity_dict=_special({} if special_sparsity_dict is None else special_sparsity_dict, pattern),
            pattern=pattern,
            restore_sparsity=_validate.flag("restore_sparsity", restore_sparsity),
            fix_sparsity=_validate.flag("fix_sparsity", fix_sparsity),
            L1_regularization=_validate.flag("L1_regularization", L1_regularization),
            l1_strength=float(strength),
            method=method,
            sr_ste_decay=float(decay) if method == "sr-ste" else 0.0,
            needs_names=keywords_no_sparse is not None or bool(special_sparsity_dict),
        )

    @classmethod
    def split_kwargs(cls, kwargs):
        """Separate pruning keywords from the base optimizer's: ``(prune_kwargs, base_kwargs)``."""
        prune = {k: kwargs[k] for k in PRUNE_ARGUMENTS if k in kwargs}
        base = {k: v for k, v in kwargs.items() if k not in prune}
        return prune, base

    @property
    def regrows(self):
        """True when pruned entries can come back at events (feedback, SR-STE): the optimizer then keeps the
        dense weights and lets gradients reach pruned entries. ``fix_sparsity`` freezes the masks once they
        exist, so nothing could regrow: the step is then magnitude pruning's, exactly."""
        return self.method != "magnitude" and not self.fix_sparsity

    def refuse_regrowing(self, framework):
        """A ConfigError when this configuration needs a regrowing method, which only PyTorch's optimizers run."""
        if self.regrows:
            raise ConfigError(f"method={self.method!r} is implemented for PyTorch only (prunekit.torch keeps the "
                              f"dense weights in its optimizer state); {framework} supports method='magnitude' "
                              "(with fix_sparsity=True every method is magnitude pruning, and is accepted)")

    @property
    def is_noop(self):
        """True when nothing will ever be pruned or changed: the base optimizer's behaviour, exactly."""
        return (self.target_sparsity == 0.0 and not any(self.special_sparsity_dict.values())
                and not self.restore_sparsity and not self.L1_regularization)
