"""Pruning optimizers for PyTorch: ``torch.optim`` classes with the seed's pruning arguments.

``SGDSparse(params, lr, ..., target_sparsity=0.9, ...)`` is ``torch.optim.SGD`` plus pruning; every
SGD argument keeps its name, default and meaning. With nothing to prune (``target_sparsity=0``) the
step *is* the base step, so results are bit-identical.

How a step keeps pruned entries at exactly 0.0: the base optimizer updates every entry as usual, then
the parameters are multiplied by their masks (one ``_foreach_mul_`` per device). For SGD, Adam and
AdamW that is enough, because their updates are element-wise: a pruned entry cannot reach a kept one.
An optimizer attached with :func:`attach` may mix entries (LAMB, LARS, Shampoo), so its gradients of
pruned entries are also zeroed before its update, and so are the weights a prune event pruned (an
element-wise update gets them zeroed by the masking after it, saving a pass).
"""

import difflib
import inspect
import warnings

import torch

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.errors import PrunekitTypeError
from prunekit.torch.engine import PruningEngine

__all__ = ["SGDSparse", "AdamSparse", "AdamWSparse", "attach", "SparseOptimizerMixin"]


def _names_from(param_name, param_groups):
    """Parameter names, by identity, from ``param_name`` or torch's own named-parameter groups."""
    by_id = {}
    if param_name is not None:
        for item in param_name:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise PrunekitTypeError(f"param_name must be model.named_parameters() (pairs of name, "
                                        f"parameter); got an item {item!r:.80}")
            by_id[id(item[1])] = item[0]
    else:
        for group in param_groups:
            for name, p in zip(group.get("param_names", ()), group["params"]):
                by_id[id(p)] = name
    ordered = [p for g in param_groups for p in g["params"]]
    if not by_id:
        return [(f"param{i}", p) for i, p in enumerate(ordered)], False
    missing = [i for i, p in enumerate(ordered) if id(p) not in by_id]
    if missing:
        raise PrunekitTypeError(f"param_name does not name every optimized parameter (positions {missing[:5]} "
                                "have no name); pass model.named_parameters() of the same model")
    return [(by_id[id(p)], p) for p in ordered], True


class SparseOptimizerMixin:
    """Adds pruning to a ``torch.optim.Optimizer`` subclass. Put it first in the bases."""

    #: Zero gradients of pruned entries before the base update (needed when the update mixes entries).
    _prunekit_mask_grads = True

    def _prunekit_setup(self, param_name, prune_kwargs):
        config = PruneConfig.from_kwargs(**prune_kwargs)
        named, has_names = _names_from(param_name, self.param_groups)
        self._prunekit = PruningEngine(named, config, owner=self, optimizer=self, named=has_names)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_prunekit"):  # torch's own __init__ adds the first groups
            warnings.warn(f"prunekit: a param group added after {type(self).__name__} was built is not pruned "
                          "(its plan is fixed at construction); build the optimizer with every parameter",
                          stacklevel=2)

    def __getstate__(self):
        state = super().__getstate__()
        state["_prunekit"] = self._prunekit
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._prunekit.check_loaded_state()

    @property
    def plan(self):
        """The resolved plan: which parameters are pruned, to which target, in which pattern."""
        return self._prunekit.plan

    @property
    def pruning(self):
        """The :class:`PruningEngine` (step count, masks, schedule)."""
        return self._prunekit

    def sparsity(self):
        """``(per_tensor: dict[name, float], total: float)`` measured on the weights."""
        return self._prunekit.sparsity()

    def step(self, closure=None):
        engine = self._prunekit
        if not engine.active:
            return super().step(closure)
        # an event's zeroing waits until it is known how the update runs (a compiled step does it)
        engine.before_update(defer=closure is None)
        compiled = getattr(self, "_prunekit_compiled", None)
        if compiled is not None and closure is None and not engine.config.L1_regularization:
            if compiled(self, engine.masks_by_param()):
                engine.after_update(masked=True)
                return None
        mask_grads = self._prunekit_mask_grads
        # an element-wise update is masked right after (after_update): only the state needs zeroing now
        engine.flush_deferred(weights=mask_grads)
        needs_grads = mask_grads or engine.config.L1_regularization
        if closure is None:
            if needs_grads:
                engine.process_grads(mask_grads)
            loss = super().step()
        else:
            def processed_closure():
                result = closure()
                if needs_grads:
                    engine.process_grads(mask_grads)
                return result
            loss = super().step(processed_closure)
        engine.after_update()
        return loss


def _check_keywords(base, base_kwargs):
    accepted = [n for n in inspect.signature(base.__init__).parameters if n not in ("self", "params")]
    unknown = [k for k in base_kwargs if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted + list(PRUNE_ARGUMENTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PrunekitTypeError(f"unknown argument {unknown[0]!r}{hint}; {base.__name__} accepts {accepted} "
                                f"and the pruning arguments {list(PRUNE_ARGUMENTS)}")


def _init_sparse(self, base, params, param_name, kwargs):
    prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
    _check_keywords(base, base_kwargs)
    if param_name is not None:
        param_name = list(param_name)
    params = list(params) if not isinstance(params, torch.Tensor) else params
    base.__init__(self, params, **base_kwargs)
    self._prunekit_setup(param_name, prune_kwargs)


def _compile(optimizer, compile_step, step_class):
    """``compile_step=True``: the compiled step (``prunekit.torch.compiled``) and compiled prune events."""
    if not isinstance(compile_step, bool):
        raise PrunekitTypeError(f"compile_step must be True or False; got {compile_step!r}")
    if compile_step:
        from prunekit.torch import compiled
        optimizer._prunekit_compiled = getattr(compiled, step_class)()
        optimizer._prunekit.compiled_event = compiled.CompiledPruneEvent()


class SGDSparse(SparseOptimizerMixin, torch.optim.SGD):
    """``torch.optim.SGD`` that prunes on a schedule.

    Args:
        params: parameters, param groups, or ``model.named_parameters()``.
        param_name: ``model.named_parameters()`` as in the seed (names for keywords and per-name targets).
        **kwargs: every ``torch.optim.SGD`` argument (``lr``, ``momentum``, ``dampening``,
            ``weight_decay``, ``nesterov``, ``maximize``, ``foreach``, ...) and the pruning arguments
            of SPEC.md (``target_sparsity``, ``pretrain_step``, ``sparse_step``, ``frequency``,
            ``init_sparsity``, ``keywords_no_sparse``, ``special_sparsity_dict``, ``pattern`` or
            ``sparse_block``, ``restore_sparsity``/``resume``, ``fix_sparsity``,
            ``L1_regularization``, ``l1_strength``, ``exponent``).
        compile_step: fuse the update and the masks with ``torch.compile``, and run prune events
            on unstructured float32 tensors as compiled passes (see :mod:`prunekit.torch.compiled`):
            a step at about the speed of plain SGD and events ~2x faster, after a compile of tens of
            seconds (needs a C++ compiler on CPU). Off by default.

    Example:
        >>> import torch, prunekit.torch as pruning
        >>> model = torch.nn.Linear(16, 8)
        >>> opt = pruning.SGDSparse(model.parameters(), lr=0.1, param_name=model.named_parameters(),
        ...                         target_sparsity=0.75, sparse_step=0)
        >>> model(torch.randn(4, 16)).sum().backward(); opt.step()
        >>> opt.sparsity()[1]
        0.75
    """

    _prunekit_mask_grads = False

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        if args:
            raise PrunekitTypeError("pass SGDSparse arguments after lr by keyword (momentum=..., ...)")
        _init_sparse(self, torch.optim.SGD, params, param_name, dict(kwargs, lr=lr))
        _compile(self, compile_step, "CompiledSGDStep")


class AdamSparse(SparseOptimizerMixin, torch.optim.Adam):
    """``torch.optim.Adam`` that prunes on a schedule; arguments (``compile_step`` too) as :class:`SGDSparse`."""

    _prunekit_mask_grads = False

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        if args:
            raise PrunekitTypeError("pass AdamSparse arguments after lr by keyword (betas=..., ...)")
        _init_sparse(self, torch.optim.Adam, params, param_name, dict(kwargs, lr=lr))
        _compile(self, compile_step, "CompiledAdamStep")


class AdamWSparse(SparseOptimizerMixin, torch.optim.AdamW):
    """``torch.optim.AdamW`` that prunes on a schedule; arguments (``compile_step`` too) as :class:`SGDSparse`."""

    _prunekit_mask_grads = False

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        if args:
            raise PrunekitTypeError("pass AdamWSparse arguments after lr by keyword (betas=..., ...)")
        _init_sparse(self, torch.optim.AdamW, params, param_name, dict(kwargs, lr=lr))
        _compile(self, compile_step, "CompiledAdamStep")


_ATTACHED = {}


def _sparse_class(base):
    if base not in _ATTACHED:
        _ATTACHED[base] = type(f"{base.__name__}Sparse", (SparseOptimizerMixin, base),
                               {"__module__": __name__, "__doc__": f"{base.__name__} with prunekit pruning."})
    return _ATTACHED[base]


def attach(optimizer, named_params=None, **prune_args):
    """Turn any ``torch.optim.Optimizer`` (RMSprop, LAMB, a third-party one) into a pruning one.

    The optimizer keeps its identity, state and ``isinstance`` checks; its class becomes a subclass
    ``<Base>Sparse`` that adds pruning to ``step``. Because such an optimizer may mix entries of a
    tensor, gradients of pruned entries are zeroed before its update.

    Args:
        optimizer: an optimizer whose state is still empty or belongs to these parameters.
        named_params: ``model.named_parameters()``; optional when the optimizer was built from
            named parameters, required for name-based options.
        **prune_args: the pruning arguments of SPEC.md.

    Returns:
        The same optimizer object.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PrunekitTypeError(f"attach needs a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if isinstance(optimizer, SparseOptimizerMixin):
        raise PrunekitTypeError(f"{type(optimizer).__name__} already prunes; attach it once")
    unknown = sorted(set(prune_args) - set(PRUNE_ARGUMENTS))
    if unknown:
        raise PrunekitTypeError(f"attach got unknown pruning arguments {unknown}; accepted: {list(PRUNE_ARGUMENTS)}")
    named_params = list(named_params) if named_params is not None else None
    optimizer.__class__ = _sparse_class(type(optimizer))
    try:
        optimizer._prunekit_setup(named_params, prune_args)
    except Exception:
        optimizer.__class__ = optimizer.__class__.__mro__[2]
        raise
    return optimizer
