"""Pruning optimizers for PyTorch: ``torch.optim`` classes with the seed's pruning arguments.

``SGDSparse(params, lr, ..., target_sparsity=0.9, ...)`` is ``torch.optim.SGD`` plus pruning; every
SGD argument keeps its name, default and meaning. With nothing to prune (``target_sparsity=0``) the
step *is* the base step, so results are bit-identical.

How a step keeps pruned entries at exactly 0.0: their gradients are zeroed as ``backward()`` accumulates
them (a hook per pruned tensor, see :mod:`prunekit.torch.engine`) and their optimizer state is zeroed at
the event that prunes them. For SGD, Adam and AdamW, whose updates are element-wise, a weight, gradient
and state that are all 0 stay 0, so between events the step is the base step alone (on CPU, one native
pass per tensor with torch's arithmetic, which at a prune event also writes the zeros of what it pruned:
:mod:`prunekit.torch._native_step`). An optimizer attached with :func:`attach`
may mix entries (LAMB, LARS, Shampoo), so its weights are also masked after every update.
"""

import difflib
import functools
import inspect
import warnings
import weakref

import torch

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.errors import ConfigError, PrunekitTypeError
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


def _unhooked(fn):
    """``fn`` without torch's ``profile_hook_step`` wrappers (which run the step hooks)."""
    while getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _all_lr_zero(groups):
    for group in groups:
        lr = group.get("lr")
        if lr is None or (float(lr) if not torch.is_tensor(lr) else float(lr.detach().cpu())) != 0.0:
            return False
    return True


class SparseOptimizerMixin:
    """Adds pruning to a ``torch.optim.Optimizer`` subclass. Put it first in the bases."""

    #: The base update is element-wise (SGD, Adam, AdamW): with pruned weights, gradients and state at 0,
    #: it leaves pruned entries at exactly 0 by itself, so no pass over the weights follows it. An
    #: optimizer attached with :func:`attach` may mix entries (LAMB, LARS): its weights are masked after.
    _prunekit_elementwise = False

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
        state["_prunekit_compile"] = getattr(self, "_prunekit_compiled", None) is not None
        state["_prunekit_native"] = getattr(self, "_prunekit_native", None) is not None
        return state

    def __setstate__(self, state):
        compile_step = state.pop("_prunekit_compile", False)
        native_step = state.pop("_prunekit_native", False)
        super().__setstate__(state)
        if compile_step:
            _compile(self, True, _COMPILED_STEP[type(self).__name__], event=False)
        if native_step:
            from prunekit.torch._native_step import native_step_for
            self._prunekit_native = native_step_for(self)

    def __reduce_ex__(self, protocol):
        cls = type(self)
        if _ATTACHED.get(cls.__mro__[2]) is cls:  # a class made by attach(): rebuilt from its base
            return _rebuild_attached, (cls.__mro__[2],), self.__getstate__()
        return super().__reduce_ex__(protocol)

    def state_dict(self):
        return self._prunekit.pack_state_dict(super().state_dict())

    def load_state_dict(self, state_dict):
        state_dict, held = self._prunekit.hold_own_only(state_dict)
        super().load_state_dict(state_dict)
        self._prunekit.check_loaded_state(held)

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

    def _base_step(self, closure=None):
        """The base optimizer's own ``step``, without running the step hooks a second time."""
        cls = type(self)
        fn = _BASE_STEP.get(cls)
        if fn is None:
            mro = cls.__mro__
            base = next(k for k in mro[mro.index(SparseOptimizerMixin) + 1:] if "step" in k.__dict__)
            fn = _BASE_STEP[cls] = _unhooked(base.__dict__["step"])
        return fn(self, closure)

    def _skipped_step(self):
        """True when this step changes nothing the schedule should count: a fused optimizer told by
        GradScaler that the gradients hold inf/NaN (it skips the update itself), or the zero-gradient,
        zero-learning-rate step ``torch.distributed.checkpoint`` runs to create optimizer state."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.sum() > 0 if torch.is_tensor(found_inf) else found_inf):
            return True
        if _all_lr_zero(self.param_groups):
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.requires_grad]
            return bool(grads) and all(gr is not None and not gr.is_sparse and not gr.any() for gr in grads)
        return False

    def step(self, closure=None):
        engine = self._prunekit
        if not engine.active or self._skipped_step():
            return self._base_step(closure)
        if engine.config.regrows:  # feedback, SR-STE: the dense weights live in the state
            from prunekit.torch.methods import regrowing_step
            return regrowing_step(self, closure)
        compiled = getattr(self, "_prunekit_compiled", None)
        native_step = getattr(self, "_prunekit_native", None)
        elementwise = self._prunekit_elementwise
        native_ok = compiled is None and elementwise and native_step is not None
        loss, evented = None, False
        if closure is not None and native_ok:
            # as torch's SGD and Adam: the closure once, then the update (Lightning always passes one); an
            # event first zeroes what it prunes, so that the closure's forward pass sees the pruned weights
            engine.before_update(defer=False)
            evented = True
            with torch.enable_grad():
                loss = closure()
            closure = None
        # the default on CPU: one native pass per tensor that also writes the zeros of what an event prunes
        plan = native_step.plan(self) if closure is None and native_ok else None
        if not evented:
            # an event's zeroing waits until it is known how the update runs (a compiled or native step does it)
            engine.before_update(defer=closure is None, by_update=plan is not None)
        l1 = engine.config.L1_regularization
        grad_scale = getattr(self, "grad_scale", None)
        # before the first event (no masks) the step stays torch's own, bit for bit
        if plan is not None and engine.masks:
            engine.masked_update(lambda masks, zero_grads: native_step.run(self, plan, masks, zero_grads),
                                 [item[0] for item in plan], l1=l1)
            return loss
        if compiled is not None and closure is None and not l1:
            engine.mask_grads()
            if compiled(self, engine.masks_by_param()):
                engine.after_update(masked=True)
                return None
        engine.flush_deferred()
        if elementwise:
            engine.clean_weights()

        def prepare():
            engine.mask_grads()
            if l1:
                engine.add_l1(grad_scale)

        if closure is None:
            prepare()
            self._base_step()
        else:
            def processed_closure():
                result = closure()
                prepare()
                return result
            loss = self._base_step(processed_closure)
        engine.after_update(masked=elementwise)
        return loss


_BASE_STEP = {}
_COMPILED_STEP = {"SGDSparse": "CompiledSGDStep", "AdamSparse": "CompiledAdamStep", "AdamWSparse": "CompiledAdamStep"}


def _check_keywords(base, base_kwargs):
    accepted = [n for n in inspect.signature(base.__init__).parameters if n not in ("self", "params")]
    unknown = [k for k in base_kwargs if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted + list(PRUNE_ARGUMENTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PrunekitTypeError(f"unknown argument {unknown[0]!r}{hint}; {base.__name__} accepts {accepted} "
                                f"and the pruning arguments {list(PRUNE_ARGUMENTS)}")


def _init_sparse(self, base, params, param_name, args, kwargs):
    prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
    if args:  # torch.optim's positional order: SGD(params, lr, momentum, dampening, weight_decay, nesterov)
        names = [n for n, prm in inspect.signature(base.__init__).parameters.items()
                 if prm.kind == prm.POSITIONAL_OR_KEYWORD and n not in ("self", "params", "lr")]
        if len(args) > len(names):
            raise PrunekitTypeError(f"{type(self).__name__} takes at most {len(names) + 2} positional arguments "
                                    f"(params, lr, {', '.join(names)}); got {len(args) + 2}")
        for name, value in zip(names, args):
            if name in base_kwargs:
                raise PrunekitTypeError(f"{type(self).__name__} got {name!r} both by position and by keyword")
            base_kwargs[name] = value
    _check_keywords(base, base_kwargs)
    if param_name is not None:
        param_name = list(param_name)
    params = list(params) if not isinstance(params, torch.Tensor) else params
    base.__init__(self, params, **base_kwargs)
    self._prunekit_setup(param_name, prune_kwargs)


def _compile(optimizer, compile_step, step_class, event=True):
    """The prune-event kernels every CPU optimizer gets (``prunekit.core.native``, when they build), and
    with ``compile_step=True`` the compiled step and inductor's event passes (``prunekit.torch.compiled``)."""
    if not isinstance(compile_step, bool):
        raise PrunekitTypeError(f"compile_step must be True or False; got {compile_step!r}")
    if not optimizer._prunekit.active:
        return
    if optimizer._prunekit.config.regrows:
        if compile_step:
            raise ConfigError(f"compile_step=True fuses magnitude pruning's step; method="
                              f"{optimizer._prunekit.config.method!r} runs its own eager step (leave compile_step off)")
        return  # its events select from the dense weights with the torch reference (prunekit.torch.methods)
    from prunekit.torch import compiled
    if compile_step:
        optimizer._prunekit_compiled = getattr(compiled, step_class)()
    if event:
        optimizer._prunekit.compiled_event = compiled.CompiledPruneEvent(inductor=compile_step)
    if step_class is not None and not compile_step:
        from prunekit.torch._native_step import native_step_for
        optimizer._prunekit_native = native_step_for(optimizer)


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
            ``L1_regularization``, ``l1_strength``, ``exponent``, ``method`` (``"magnitude"``,
            ``"feedback"`` or ``"sr-ste"``: see :mod:`prunekit.torch.methods`), ``sr_ste_decay``).
        compile_step: fuse the update and the masks with ``torch.compile``, and run prune events
            on unstructured float32 tensors as compiled passes (see :mod:`prunekit.torch.compiled`),
            after a compile of tens of seconds (needs a C++ compiler on CPU). Off by default: on CPU the
            default native update and events are as fast; on CUDA it fuses the masked update.

    Example:
        >>> import torch, prunekit.torch as pruning
        >>> model = torch.nn.Linear(16, 8)
        >>> opt = pruning.SGDSparse(model.parameters(), lr=0.1, param_name=model.named_parameters(),
        ...                         target_sparsity=0.75, sparse_step=0)
        >>> model(torch.randn(4, 16)).sum().backward(); opt.step()
        >>> opt.sparsity()[1]
        0.75
    """

    _prunekit_elementwise = True

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        _init_sparse(self, torch.optim.SGD, params, param_name, args, dict(kwargs, lr=lr))
        _compile(self, compile_step, "CompiledSGDStep")


class AdamSparse(SparseOptimizerMixin, torch.optim.Adam):
    """``torch.optim.Adam`` that prunes on a schedule; arguments (``compile_step`` too) as :class:`SGDSparse`."""

    _prunekit_elementwise = True

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        _init_sparse(self, torch.optim.Adam, params, param_name, args, dict(kwargs, lr=lr))
        _compile(self, compile_step, "CompiledAdamStep")


class AdamWSparse(SparseOptimizerMixin, torch.optim.AdamW):
    """``torch.optim.AdamW`` that prunes on a schedule; arguments (``compile_step`` too) as :class:`SGDSparse`."""

    _prunekit_elementwise = True

    def __init__(self, params, lr=1e-3, *args, param_name=None, compile_step=False, **kwargs):
        _init_sparse(self, torch.optim.AdamW, params, param_name, args, dict(kwargs, lr=lr))
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
    instance_step = optimizer.__dict__.get("step")
    if instance_step is not None and not getattr(instance_step, "_wrapped_by_lr_sched", False):
        raise PrunekitTypeError(f"{type(optimizer).__name__}.step was replaced on this instance (by "
                                f"{getattr(instance_step, '__qualname__', instance_step)!r}); call attach() before "
                                "wrapping the optimizer's step")
    base = type(optimizer)
    optimizer.__class__ = _sparse_class(base)
    try:
        optimizer._prunekit_setup(named_params, prune_args)
        _compile(optimizer, False, None)
    except Exception:
        optimizer.__class__ = base
        raise
    optimizer._patch_step_function()  # the step hooks run around the new class's step, once
    if instance_step is not None:
        _rewrap_scheduled_step(optimizer)
    return optimizer


def _rewrap_scheduled_step(optimizer):
    """An LR scheduler built before :func:`attach` wrapped the instance's ``step`` (to notice a call
    order mistake); its wrapper calls the old class's step. Wrap the new one the same way."""
    ref = weakref.ref(optimizer)
    step = type(optimizer).step

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        opt = ref()
        opt._opt_called = True
        return step(opt, *args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.step = wrapper


def _rebuild_attached(base):
    """Unpickling an optimizer made by :func:`attach`: an empty instance of its class, rebuilt from the base."""
    cls = _sparse_class(base)
    return cls.__new__(cls)
