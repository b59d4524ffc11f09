"""The engine that binds the core's decisions (plan, schedule, masks) to torch tensors.

One engine serves every torch entry point: the optimizers, :func:`attach` and the model-level
:class:`Prune`. Where its state lives depends on the owner:

* an optimizer (:class:`_OptimizerStore`): each pruned parameter's mask is in that parameter's own
  optimizer state, ``optimizer.state[p]["prunekit_mask"]`` (a bool tensor shaped like ``p``; the
  sparsity a restored model started from, ``"prunekit_restored"``, beside it), and the step counter is
  ``param_group["prunekit_step"]`` in every param group. That is the layout ``state_dict()``,
  ``torch.distributed.checkpoint``'s ``get/set_optimizer_state_dict``, FSDP and
  ``ZeroRedundancyOptimizer`` already carry: state keyed by parameter, group keys beside ``lr``.
  Optimizers such as Adam create a parameter's state on its first update when it is empty
  (``len(state) == 0``); a mask put there first would stop that, so until the base optimizer has made a
  parameter's state the mask waits in the engine and ``state_dict()`` adds it (see docs/spec.md).
* the model-level ``Prune`` (:class:`_DictStore`): one plain dict ``{"step", "masks", "restored"}``.

Parameters that are ``DTensor`` shards (FSDP2's ``fully_shard``) have ``DTensor`` masks placed like them;
their prune events go through :mod:`prunekit.torch.distributed` (each rank selects on its shard, with the
single-process masks), and everything else here works on the local shards.

Between prune events the gradients of pruned entries are zeroed as ``backward()`` accumulates them (a
post-accumulate-grad hook on each pruned parameter, registered once it has a mask), so gradient
clipping, logging and GradScaler's inf check see only the kept entries, and element-wise updates
(SGD, Adam, AdamW) leave pruned weights and their state at exactly 0 without another pass.
"""

import weakref
from collections import defaultdict

import torch

from prunekit.core import native
from prunekit.core.masks import prune_count
from prunekit.core.plan import resolve_plan
from prunekit.core.pruner import HostPruner
from prunekit.errors import PlanError, PruningRuntimeError
from prunekit.torch import _select
from prunekit.torch import distributed as _dist

__all__ = ["PruningEngine", "STATE_KEY", "MASK_KEY", "RESTORED_KEY", "STEP_KEY", "MASKED_KEY", "DENSE_KEY", "zero_pruned_",
           "mask_nbytes"]

#: the model-level ``Prune``'s state key (and, before prunekit 0.2, the optimizers': migrated on load)
STATE_KEY = "prunekit"
MASK_KEY = "prunekit_mask"
RESTORED_KEY = "prunekit_restored"
STEP_KEY = "prunekit_step"
MASKED_KEY = "prunekit_masked"
#: the dense weights of a method that lets pruned entries regrow (feedback, SR-STE; prunekit.torch.methods)
DENSE_KEY = "prunekit_dense"
_OWN_KEYS = (MASK_KEY, RESTORED_KEY, DENSE_KEY)


_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                  torch.float64: torch.int64}


def _native_zeroable(t, m):
    """Whether the native kernels can zero ``t`` (detached) by the bool mask ``m``: plain CPU tensors of
    4-byte floats, both contiguous, the same size."""
    return (type(t) is torch.Tensor and type(m) is torch.Tensor and t.device.type == "cpu" and m.device.type == "cpu"
            and t.dtype == torch.float32 and m.dtype == torch.bool and t.is_contiguous() and m.is_contiguous()
            and t.numel() == m.numel())


def zero_pruned_(tensors, masks, priors=None):
    """``t[~mask] = 0`` for each pair, in place, to +0.0.

    On a CPU with prunekit's native kernels, float32 tensors go through one pass per mask however many
    tensors share it (:func:`prunekit.core.native.zero_where`); the rest through one ``_foreach_mul_`` per
    device and dtype, multiplying a float tensor as its same-size integer view by the mask's bytes: the
    bits of a kept entry times 1 are unchanged, times 0 they are +0.0. Exact either way; see
    docs/results.md for what each costs. ``priors``: None, or per pair None or the mask ``t`` was last
    zeroed with and is still 0.0 under (the caller knows it): the native pass then writes only the entries
    pruned for the first time, and only the cache lines that hold one.
    """
    groups = defaultdict(lambda: ([], []))
    by_mask = {}
    lib = None
    for i, (t, m) in enumerate(zip(tensors, masks)):
        t, m = _dist.local(t.detach()), _dist.local(m)  # a DTensor shard and its mask's shard
        if _native_zeroable(t, m):
            if lib is None:
                lib = native.kernels() or False
            if lib:
                prior = None if priors is None or priors[i] is None else _dist.local(priors[i])
                if prior is not None and not _native_zeroable(t, prior):
                    prior = None
                entry = by_mask.setdefault((id(m), None if prior is None else id(prior)), (m, prior, [], []))
                entry[2 if prior is None else 3].append(t)
                continue
        int_dtype = _SAME_SIZE_INT.get(t.dtype)
        if int_dtype is not None:
            t, m = t.view(int_dtype), m.view(torch.uint8)
        bucket = groups[(t.device, t.dtype)]
        bucket[0].append(t)
        bucket[1].append(m)
    for ts, ms in groups.values():
        torch._foreach_mul_(ts, ms)
    if by_mask:
        entries = list(by_mask.values())
        native.zero_where([m.view(torch.uint8).numpy() for m, _, _, _ in entries],
                          [[t.numpy() for t in full] for _, _, full, _ in entries], threads=torch.get_num_threads(),
                          priors=[None if p is None else p.view(torch.uint8).numpy() for _, p, _, _ in entries],
                          fresh=[[t.numpy() for t in known] for _, _, _, known in entries])
        for _, _, full, known in entries:  # written behind autograd's back: let it know, as an in-place op would
            for t in full + known:
                torch.autograd.graph.increment_version(t)


class _DictStore:
    """The model-level ``Prune``'s state: ``owner.state["prunekit"] = {"step", "masks", "restored"}``,
    replaced (never mutated) on every change, so a ``state_dict()`` taken earlier keeps its moment."""

    def __init__(self, owner):
        self._owner = owner

    def _get(self):
        return self._owner.state.get(STATE_KEY, {"step": 0, "masks": {}, "restored": {}})

    def _set(self, **changes):
        state = dict(self._get())
        state.update(changes)
        self._owner.state[STATE_KEY] = state

    def start(self):
        pass

    def step(self):
        return self._get()["step"]

    def set_step(self, value):
        self._set(step=value)

    def masks(self):
        return dict(self._get()["masks"])

    def restored(self):
        return dict(self._get()["restored"])

    def put(self, masks=None, restored=None):
        if masks:
            self._set(masks={**self._get()["masks"], **masks})
        if restored is not None:
            self._set(restored={**self._get()["restored"], **restored})

    def settle(self):
        pass

    def loaded(self, engine, held=None):
        """After ``load_state_dict``: ``(step, masks, restored)`` as loaded (checked by the engine)."""
        state = self._get()
        return int(state.get("step", 0)), dict(state.get("masks", {})), dict(state.get("restored", {}))

    def store_loaded(self, step, masks, restored):
        self._owner.state[STATE_KEY] = {"step": step, "masks": masks, "restored": restored}


class _OptimizerStore:
    """Pruning state inside the optimizer's own state (see the module doc).

    Every key exists from construction on, so that a freshly built optimizer's ``state_dict()`` (the
    template ``torch.distributed.checkpoint`` loads into, in place) names everything a checkpoint holds:
    each mask is all True and ``prunekit_restored`` 0.0 until they mean something, and the group key
    ``prunekit_masked`` says whether the masks exist yet (the first prune event or restore sets it).
    """

    def __init__(self, optimizer, params, dense=False):
        self._opt = optimizer
        self._params = params          # {name: parameter} of the planned tensors
        self._pending = {}             # name -> {key: value}, until the base has made that state
        self._dense = dense            # keep DENSE_KEY (a regrowing method)
        self._loaded_dense = {}

    def start(self):
        self.store_loaded(0, {}, {}, masked=False)

    def step(self):
        for group in self._opt.param_groups:
            if STEP_KEY in group:
                return group[STEP_KEY]
        return 0

    def set_step(self, value):
        for group in self._opt.param_groups:
            group[STEP_KEY] = value

    def _masked(self):
        return any(group.get(MASKED_KEY, False) for group in self._opt.param_groups)

    def _set_masked(self, value):
        for group in self._opt.param_groups:
            group[MASKED_KEY] = value

    def _value(self, name, key):
        pending = self._pending.get(name)
        if pending is not None and key in pending:
            return pending[key]
        state = self._opt.state.get(self._params[name])
        return None if state is None else state.get(key)

    def masks(self):
        if not self._masked():
            return {}
        out = {}
        for name in self._params:
            mask = self._value(name, MASK_KEY)
            if mask is not None:
                out[name] = mask
        return out

    def dense(self, name):
        """The dense weights of ``name`` (a regrowing method's; meaningful once masks exist)."""
        return self._value(name, DENSE_KEY)

    def restored(self):
        out = {}
        for name in self._params:
            value = self._value(name, RESTORED_KEY)
            if value is not None:
                out[name] = float(value)
        return out

    def _put(self, name, key, value):
        p = self._params[name]
        state = self._opt.state.get(p)
        if state:  # the base optimizer has made this parameter's state (never before its first update)
            if name in self._pending:  # the base made this state since: what waited moves in first
                state.update(self._pending.pop(name))
            state[key] = value
        else:
            self._pending.setdefault(name, {})[key] = value

    def put(self, masks=None, restored=None):
        for name, mask in (masks or {}).items():
            self._put(name, MASK_KEY, mask)
        for name, value in (restored or {}).items():
            self._put(name, RESTORED_KEY, float(value))
        if masks:
            self._set_masked(True)

    def settle(self):
        """Move waiting entries into parameter states the base optimizer has made since."""
        for name in list(self._pending):
            state = self._opt.state.get(self._params[name])
            if state:
                state.update(self._pending.pop(name))

    def pack(self, state_dict):
        """Complete an ``Optimizer.state_dict()``: waiting entries added, and the per-parameter dicts that
        hold masks copied, so later events (which replace masks) do not change this snapshot."""
        index = {id(p): i for i, p in enumerate(p for g in self._opt.param_groups for p in g["params"])}
        packed = state_dict["state"]
        for name, p in self._params.items():
            i = index.get(id(p))
            if i is None:
                continue
            entry, pending = packed.get(i), self._pending.get(name)
            if pending or (entry is not None and MASK_KEY in entry):
                packed[i] = {**(entry or {}), **(pending or {})}
        return state_dict

    def hold_own_only(self, state_dict):
        """``(state_dict without them, {parameter: entry})`` for the per-parameter entries that hold nothing
        but prunekit's keys (the base never made that state): torch's ``load_state_dict`` would hand them to
        the base's ``__setstate__``, and Adam's reads ``state["step"]`` from every non-empty one."""
        saved = state_dict.get("state", {})
        ids = [i for g in state_dict.get("param_groups", []) for i in g.get("params", [])]
        params = [p for g in self._opt.param_groups for p in g["params"]]
        held, kept = {}, dict(saved)
        for i, p in zip(ids, params):
            entry = saved.get(i)
            if isinstance(entry, dict) and entry and all(k in _OWN_KEYS for k in entry):
                held[p] = entry
                del kept[i]
        if not held:
            return state_dict, {}
        return {**state_dict, "state": kept}, held

    def loaded(self, engine, held=None):
        """After ``load_state_dict``: ``(step, masks, restored)`` as loaded (masks only if they exist).

        A per-parameter state that holds only prunekit's entries goes back to waiting (its base state was
        never made); a checkpoint written before masks moved into the parameter states (a string key
        ``"prunekit"`` in ``state``) is read and converted.
        """
        self._pending = {}
        legacy = self._opt.state.pop(STATE_KEY, None)
        own = {id(p) for p in self._params.values()}
        names = {id(p): n for n, p in engine._params.items()}
        for p, state in [*self._opt.state.items(), *(held or {}).items()]:
            if torch.is_tensor(p) and id(p) not in own and isinstance(state, dict) and MASK_KEY in state:
                name = names.get(id(p), f"a parameter of shape {tuple(p.shape)}")
                raise PlanError(f"loaded pruning state has a mask for {name!r}, which this optimizer's plan does "
                                f"not prune; plan: {engine.plan.names}")
        masked = self._masked()
        masks, restored, dense = {}, {}, {}
        held = held or {}
        for name, p in self._params.items():
            state = self._opt.state.get(p) or held.get(p)
            if not state:
                continue
            if MASK_KEY in state and masked:
                masks[name] = state[MASK_KEY]
            if RESTORED_KEY in state:
                restored[name] = float(state[RESTORED_KEY])
            if DENSE_KEY in state and torch.is_tensor(state[DENSE_KEY]):
                dense[name] = state[DENSE_KEY]
            if p in self._opt.state:
                for key in _OWN_KEYS:
                    self._opt.state[p].pop(key, None)
                if not self._opt.state[p]:
                    del self._opt.state[p]
        self._loaded_dense = dense
        if isinstance(legacy, dict):
            masks = dict(legacy.get("masks", {}))
            restored = dict(legacy.get("restored", {}))
            unknown = sorted(set(masks) - set(self._params))
            if unknown:
                raise PlanError(f"loaded pruning state has masks for {unknown}, which this optimizer's plan does "
                                f"not prune; plan: {engine.plan.names}")
            return int(legacy.get("step", 0)), masks, restored
        return int(self.step()), masks, restored

    def store_loaded(self, step, masks, restored, masked=None):
        """Write a whole state: masks where given (all True where not), restored sparsities (0.0 where not)."""
        dense, self._loaded_dense = self._loaded_dense, {}
        for name, p in self._params.items():
            self._put(name, MASK_KEY, masks[name] if name in masks else torch.ones_like(p, dtype=torch.bool))
            self._put(name, RESTORED_KEY, float(restored.get(name, 0.0)))
            if self._dense:
                value = dense.get(name)
                if value is None or tuple(value.shape) != tuple(p.shape):
                    value = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
                self._put(name, DENSE_KEY, value.detach().to(device=p.device, dtype=p.dtype))
        self.set_step(step)
        self._set_masked(bool(masks) if masked is None else masked)


class _GradMask:
    """The post-accumulate-grad hook of one pruned parameter: zero its pruned entries' gradient.

    Holds the engine weakly: an optimizer that is gone leaves a no-op behind, not a live mask."""

    def __init__(self, engine, name):
        self._engine = weakref.ref(engine)
        self._name = name

    def __call__(self, param):
        engine = self._engine()
        if engine is not None:
            engine._mask_grad(self._name, param)


class PruningEngine:
    """Schedule, plan and masks for a set of named torch parameters.

    Args:
        named_params: ``[(name, parameter), ...]`` in a stable order.
        config: a validated :class:`prunekit.core.PruneConfig`.
        owner: the object that holds the state: an optimizer (``optimizer is owner``: state inside its
            per-parameter state and param groups), or the model-level ``Prune`` (a dict in ``owner.state``).
        optimizer: the optimizer whose per-parameter state (``optimizer.state[p]``) is zeroed with the
            masks at prune events, or None.
        named: False when the names are placeholders (then name-based options are errors).
    """

    def __init__(self, named_params, config, owner, optimizer=None, named=True):
        self.config = config
        self.schedule = config.schedule
        self._params = dict(named_params)
        self._optimizer = optimizer
        self.plan = resolve_plan([(n, tuple(p.shape)) for n, p in named_params], config, named=named)
        self._specs = [(spec, self._params[spec.name]) for spec in self.plan]
        #: names of the planned parameters that are DTensors (FSDP2): their events go through
        #: :mod:`prunekit.torch.distributed`, which selects on each rank's shard
        self._sharded = {spec.name for spec, p in self._specs if _dist.is_sharded(p)}
        if self._sharded:
            _dist.check_plan(self._specs)
        if optimizer is not None and owner is optimizer:
            self._store = _OptimizerStore(optimizer, {s.name: p for s, p in self._specs}, dense=config.regrows)
        else:
            self._store = _DictStore(owner)
        # the core's decisions (which steps are events, which sparsity each aims at); the masks
        # themselves are computed here, on the parameters' devices
        self._decide = HostPruner(self.plan, config)
        if self.active:
            self._store.start()
        #: a :class:`prunekit.torch.compiled.CompiledPruneEvent` (native kernels, maybe inductor), or None
        self.compiled_event = None
        self._fresh()

    def _fresh(self):
        """What does not survive a copy: hooks, caches, records of what was checked."""
        self._deferred = set()   # names whose zeroing a deferred event left to the update
        self._masks = None       # cache of the store's masks (refreshed whenever they change)
        self._hooks = {}         # name -> hook handle
        self._grad_ok = {}       # name -> (weakref to the grad, its version) once masked
        self._clean = {}         # name -> (version, data_ptr) of a parameter known to hold its zeros

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_deferred", "_masks", "_hooks", "_grad_ok", "_clean"):
            state.pop(key)
        state["compiled_event"] = None if self.compiled_event is None else type(self.compiled_event)
        state["_compiled_inductor"] = getattr(self.compiled_event, "inductor", True)
        return state

    def __setstate__(self, state):
        kind = state.pop("compiled_event")
        inductor = state.pop("_compiled_inductor", True)
        state.setdefault("_sharded", set())  # an engine pickled before FSDP2 support
        self.__dict__.update(state)
        self.compiled_event = None if kind is None else kind(inductor=inductor)
        self._fresh()

    # -- state -------------------------------------------------------------------------------------
    @property
    def step_count(self):
        """Completed steps (updates) so far."""
        return self._store.step()

    @property
    def masks(self):
        """``{name: bool tensor}`` (True = kept); empty until the first prune event or restore."""
        if self._masks is None:
            self._masks = self._store.masks()
        return self._masks

    @property
    def state(self):
        """``{"step", "masks", "restored"}``: a read-only view of the pruning state, wherever it lives."""
        return {"step": self.step_count, "masks": dict(self.masks), "restored": self._store.restored()}

    def pack_state_dict(self, state_dict):
        """An optimizer's ``state_dict()`` completed with masks still waiting in the engine."""
        return self._store.pack(state_dict) if isinstance(self._store, _OptimizerStore) else state_dict

    def hold_own_only(self, state_dict):
        """Before an optimizer's ``load_state_dict``: see :meth:`_OptimizerStore.hold_own_only`."""
        if not self.active or not isinstance(self._store, _OptimizerStore):
            return state_dict, {}
        return self._store.hold_own_only(state_dict)

    def check_loaded_state(self, held=None):
        """After a load: masks must match the plan; move them onto their parameters' devices; zero what
        they prune in the weights' optimizer state (checkpoints of older versions let it grow)."""
        if not self.active:
            return
        step, masks, restored = self._store.loaded(self, held)
        self._masks = None
        self._grad_ok, self._clean, self._deferred = {}, {}, set()
        fixed = {}
        for name, mask in masks.items():
            if name not in self.plan.names:
                raise PlanError(f"loaded pruning state has a mask for {name!r}, which this optimizer's plan "
                                f"does not prune; plan: {self.plan.names}")
            p = self._params[name]
            if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(p.shape):
                shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
                raise PlanError(f"loaded mask for {name!r} has shape {shape}; the parameter has {tuple(p.shape)}")
            fixed[name] = _dist.as_local_mask(mask, p)
        self._store.store_loaded(step, fixed, restored)
        self._masks = None
        pairs = [(t, fixed[s.name]) for s, p in self._specs if s.name in fixed for t in self._state_tensors(p)]
        if pairs and not self.config.regrows:  # a regrowing method's state of pruned entries is live
            zero_pruned_(*zip(*pairs))
        self.sync_hooks()

    # -- gradients ---------------------------------------------------------------------------------
    def sync_hooks(self):
        """A gradient-masking hook on every parameter that has a mask (once each). Magnitude pruning never
        lets a pruned entry back, so its gradient is of no use to anyone."""
        if self.config.regrows:  # feedback, SR-STE: pruned entries' gradients update the dense weights
            return
        masks = self.masks
        for spec, p in self._specs:
            if spec.name in masks and spec.name not in self._hooks and p.requires_grad:
                self._hooks[spec.name] = p.register_post_accumulate_grad_hook(_GradMask(self, spec.name))

    def remove_hooks(self):
        """Take this engine's gradient hooks off the parameters (e.g. before handing the model to another
        optimizer while this one is still referenced)."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}

    @torch.no_grad()
    def _mask_grad(self, name, p):
        mask = self.masks.get(name)
        grad = p.grad
        if mask is None or grad is None:
            return
        if grad.is_sparse:
            p.grad = _masked_sparse(grad, mask)
        elif grad.requires_grad or grad.shape != mask.shape:
            p.grad = grad * mask
        else:
            zero_pruned_([grad], [mask])
        self._grad_ok[name] = (weakref.ref(p.grad), _version(p.grad))

    @torch.no_grad()
    def mask_grads(self, skip=()):
        """Zero the gradients of pruned entries that no hook has zeroed since they were last written
        (set by hand, changed in place, or before this engine's hooks existed); ``skip``: names whose
        gradients the caller masks."""
        masks, dense, dense_masks = self.masks, [], []
        for spec, p in self._specs:
            mask, grad = masks.get(spec.name), p.grad
            if mask is None or grad is None or spec.name in skip or self._grad_clean(spec.name, p):
                continue
            if grad.is_sparse or grad.requires_grad:
                self._mask_grad(spec.name, p)
            else:
                dense.append(grad)
                dense_masks.append(mask)
        if dense:
            zero_pruned_(dense, dense_masks)
            for spec, p in self._specs:
                if p.grad is not None and any(p.grad is g for g in dense):
                    self._grad_ok[spec.name] = (weakref.ref(p.grad), _version(p.grad))

    @torch.no_grad()
    def add_l1(self, grad_scale=None):
        """``l1_strength * sign(w)`` added to the gradients of the prunable tensors (times the GradScaler's
        scale when the optimizer unscales inside its step)."""
        strength = self.config.l1_strength
        for _, p in self._specs:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:  # only the rows the gradient holds: L1 on an embedding is applied lazily
                grad = grad.coalesce()
                index = tuple(grad.indices())
                pull = torch.sign(p.detach()[index]) * strength
                if grad_scale is not None:
                    pull = pull * grad_scale
                p.grad = torch.sparse_coo_tensor(grad.indices(), grad.values() + pull, grad.shape,
                                                 is_coalesced=True, check_invariants=False)
            elif grad_scale is not None:
                grad.add_(torch.sign(p.detach()) * (grad_scale * strength))
            else:
                grad.add_(torch.sign(p.detach()), alpha=strength)

    # -- the step ----------------------------------------------------------------------------------
    @property
    def active(self):
        """False when nothing can ever change: the owner then behaves exactly as its base."""
        return not self.config.is_noop and len(self._specs) > 0

    def _event_due(self):
        return self._decide.is_event(self.step_count, bool(self.masks))

    @torch.no_grad()
    def before_update(self, defer=False, by_update=False):
        """Restore masks on the first step, run a prune event when one is due.

        ``defer``: the event only computes and stores the masks; zeroing the pruned weights and
        optimizer state is left to the update (a compiled step masks both) or to
        :meth:`flush_deferred`, which the caller must run before any other update. ``by_update``
        (with ``defer``): not even the native kernels zero anything; the caller's next call is
        :meth:`masked_update`, whose update writes every zero.
        """
        if self._hooks == {} and self.masks:
            self.sync_hooks()  # after a copy or unpickling
        if self.config.restore_sparsity and not self.masks:
            self.restore()
        if self._event_due():
            self.prune_event(defer=defer, by_update=defer and by_update)

    @torch.no_grad()
    def flush_deferred(self, weights=True, only=None):
        """Zero what the last deferred event pruned: optimizer state, gradients, and weights unless
        ``weights=False`` (for an update that :meth:`after_update` masks right after); ``only``: these
        names of it, the rest stays deferred."""
        if only is None:
            names, self._deferred = self._deferred, set()
        else:
            names, self._deferred = self._deferred & set(only), self._deferred - set(only)
        masks = self.masks
        pairs = [(t, masks[s.name]) for s, p in self._specs if s.name in names
                 for t in ([p] if weights else []) + self._state_tensors(p)]
        if pairs:
            zero_pruned_(*zip(*pairs))
        for name in names:
            self._grad_ok.pop(name, None)  # the gradient was masked with the old mask, if at all
            if weights:
                self._note_clean(name)

    @torch.no_grad()
    def masked_update(self, update, stepped, l1=False):
        """Run ``update(masks, zero_grads)``: an element-wise update of the parameters ``stepped`` that, for
        each parameter in ``masks``, writes +0.0 to its weights and state wherever its mask prunes (the
        native step), and to its gradient if it is in ``zero_grads``. The others are clean: their pruned
        weights, gradients and state are 0.0, which an element-wise update keeps. ``masks`` holds what an
        event deferred to this update (:meth:`before_update` with ``by_update``), written in the pass the
        update makes anyway, and weights or gradients changed since this engine last zeroed them (a load,
        an edit, a gradient no hook masked); what the update does not step (no gradient) is zeroed here.
        Then the step is counted (``l1``: the L1 pull is added to the gradients first, and every mask goes
        to the update, gradients included)."""
        stepped = {id(p) for p in stepped}
        names = {s.name for s, p in self._specs if id(p) in stepped}
        deferred = self._deferred
        self.flush_deferred(only=deferred - names)
        self._deferred = set()
        self.clean_weights(skip=names)
        masks, dirty, zero_grads = self.masks, {}, set()
        for spec, p in self._specs:  # the plan steps only parameters with plain gradients
            mask = masks.get(spec.name)
            if spec.name not in names or mask is None:
                continue
            grad_dirty = not self._grad_clean(spec.name, p)
            if l1 or grad_dirty or spec.name in deferred or not self._weights_clean(spec.name, p):
                dirty[p] = mask
            if l1 or grad_dirty:  # L1 pulls a pruned entry whose weight is not 0 yet
                zero_grads.add(p)
        self.mask_grads(skip=names)
        if l1:
            self.add_l1()
        update(dirty, zero_grads)
        for spec, p in self._specs:
            if p in zero_grads:
                self._grad_ok[spec.name] = (weakref.ref(p.grad), _version(p.grad))
        self.after_update(masked=True)

    def _weights_clean(self, name, p):
        """Whether ``p`` holds its zeros: unchanged since this engine last zeroed or updated it."""
        return self._clean.get(name) == (_version(p), _dist.local(p).data_ptr())

    def _grad_clean(self, name, p):
        """Whether ``p.grad`` is the gradient this engine masked last, unchanged since."""
        ok = self._grad_ok.get(name)
        return ok is not None and ok[0]() is p.grad and _version(p.grad) == ok[1]

    @torch.no_grad()
    def clean_weights(self, skip=()):
        """Zero pruned weights changed outside the optimizer since its last step (a load, a manual edit);
        ``skip``: names whose update writes their zeros itself."""
        masks, pairs, names = self.masks, [], []
        for spec, p in self._specs:
            mask = masks.get(spec.name)
            if mask is None or spec.name in skip:
                continue
            if not self._weights_clean(spec.name, p):
                pairs.append((p, mask))
                names.append(spec.name)
        if pairs:
            zero_pruned_(*zip(*pairs))
            for name in names:
                self._note_clean(name)

    def _note_clean(self, name):
        p = self._params[name]
        self._clean[name] = (_version(p), _dist.local(p).data_ptr())

    @torch.no_grad()
    def after_update(self, masked=False):
        """Pruned entries back to exactly 0.0 (unless the update kept them there), then count the step.

        ``masked``: the update left pruned weights and their optimizer state at 0 itself (a compiled
        step; an element-wise update of clean weights with masked gradients).
        """
        self._deferred = set()
        if not masked:
            self.apply_masks()
        else:
            for name in self.masks:
                self._note_clean(name)
        self._store.set_step(self.step_count + 1)
        self._store.settle()

    def masks_by_param(self):
        """``{parameter: mask}`` for the tensors that have masks."""
        masks = self.masks
        return {p: masks[s.name] for s, p in self._specs if s.name in masks}

    @torch.no_grad()
    def apply_masks(self):
        masks = self.masks
        pairs = [(p, masks[s.name]) for s, p in self._specs if s.name in masks]
        if pairs:
            zero_pruned_(*zip(*pairs))
            for spec, _ in self._specs:
                if spec.name in masks:
                    self._note_clean(spec.name)

    # -- prune events ------------------------------------------------------------------------------
    def _non_finite(self, names):
        return PruningRuntimeError(f"{', '.join(repr(n) for n in names)} holds NaN or inf at step {self.step_count}; "
                                   "masks cannot be ranked (lower the learning rate or clip gradients)")

    @torch.no_grad()
    def prune_event(self, defer=False, by_update=False):
        """Recompute every mask at the current step, zero pruned weights, their gradients and optimizer
        state (``defer``, ``by_update``: see :meth:`before_update`; with ``defer`` alone, tensors whose masks
        the native kernels decide are zeroed in their mask pass, which costs less than a pass of its own
        later)."""
        step, old, restored = self.step_count, self.masks, self._store.restored()
        new, grouped, zeroed, grads_zeroed = self._compiled_masks(step, old, restored, zero=not defer,
                                                                  write=not by_update)
        new.update(grouped)
        global_specs = [(s, p) for s, p in self._specs if s.pattern.is_global]
        if self._sharded:
            new.update(self._sharded_masks(step, old, restored, global_specs))
            global_specs = [] if any(s.name in new for s, _ in global_specs) else global_specs
        for spec, p in self._specs:
            if spec.pattern.is_global or spec.name in new:
                continue
            sparsity = self._decide.sparsity_at(step, [spec.name], restored)
            try:
                new[spec.name] = _select.tensor_mask(p, sparsity, spec.pattern, old.get(spec.name))
            except _select.NonFiniteWeights:
                raise self._non_finite([spec.name]) from None
        if global_specs:
            names = [s.name for s, _ in global_specs]
            sparsity = self._decide.sparsity_at(step, names, restored)
            priors = [old[n] for n in names] if all(n in old for n in names) else None
            try:
                masks = _select.global_masks([p for _, p in global_specs], sparsity, priors)
            except _select.NonFiniteWeights:
                raise self._non_finite(names) from None
            new.update(zip(names, masks))
        if defer:
            self._store.put(masks=new)
            self._masks = None
            self._deferred = set(new) - zeroed
            for name in new:
                self._after_zeroing(name, name in zeroed, name in grads_zeroed)
            self.sync_hooks()
        else:
            self._install(new, zeroed=zeroed, grads_zeroed=grads_zeroed, split=True)

    def _after_zeroing(self, name, weights, grad):
        """Records for a parameter whose new mask was just applied to its weights (``weights``) and to its
        gradient (``grad``), or not: a gradient masked with an older mask must be masked again."""
        if weights:
            self._note_clean(name)
        else:  # clean under the previous mask at most
            self._clean.pop(name, None)
        p = self._params[name]
        if grad and p.grad is not None:
            self._grad_ok[name] = (weakref.ref(p.grad), _version(p.grad))
        else:
            self._grad_ok.pop(name, None)

    def _plain_grad(self, p):
        """``p.grad`` when it is a dense tensor shaped like ``p`` that masking may change in place, else None."""
        g = p.grad
        if g is None or g.is_sparse or g.requires_grad or g.shape != p.shape:
            return None
        return g

    def _sharded_masks(self, step, old, restored, global_specs):
        """Masks by name of the sharded tensors (and of the ``Global()`` set when one of them is sharded),
        selected on each rank's shard by :func:`prunekit.torch.distributed.event_masks`."""
        items = []
        for spec, p in self._specs:
            if spec.name in self._sharded and not spec.pattern.is_global:
                sparsity = self._decide.sparsity_at(step, [spec.name], restored)
                items.append((spec.name, p, sparsity, spec.pattern, old.get(spec.name)))
        global_set = None
        if any(s.name in self._sharded for s, _ in global_specs):
            names = [s.name for s, _ in global_specs]
            priors = [old[n] for n in names] if all(n in old for n in names) else None
            global_set = (names, [p for _, p in global_specs], self._decide.sparsity_at(step, names, restored), priors)
        try:
            return _dist.event_masks(items, global_set)
        except _select.NonFiniteWeights as error:
            raise self._non_finite(error.args[0]) from None

    def _compiled_masks(self, step, old, restored, zero, write=True):
        """Masks by name from the compiled event: ``(whole tensors, grouped patterns, names whose weights and
        state were zeroed, names whose gradients were)``. On a CPU the native kernels zero weights, state and
        gradients with the masks they decide, unless not ``write`` (in the mask pass, in the blocks'
        expansion, or, for N:M groups and banks, in one pass right after); inductor zeroes weights and state
        when ``zero``, and its groups nothing. Tensors on different devices go separately."""
        compiled = self.compiled_event
        if compiled is None:
            return {}, {}, set(), set()
        by_device = defaultdict(lambda: ([], [], [], [], [], [], []))
        for spec, p in self._specs:
            if spec.pattern.is_global or spec.name in self._sharded:
                continue
            items, names, groups, group_names, blocks, block_names, with_grad = by_device[p.device]
            layout = spec.pattern.layout(tuple(p.shape))
            sparsity = self._decide.sparsity_at(step, [spec.name], restored)
            prior = old.get(spec.name)
            if compiled.takes_groups(p, layout):
                groups.append((p, prune_count(sparsity, layout.group_size), prior, layout))
                group_names.append(spec.name)
                continue
            if compiled.takes_blocks(p, layout):  # native only
                blocks.append((p, sparsity, prior, layout, self._split_known(spec.name, self._zero_targets(p))
                               if write else ([], [])))
                block_names.append(spec.name)
                continue
            if not compiled.takes(p, layout):
                continue
            inline = compiled._native_on(p.device) and write
            states = self._state_tensors(p) if zero or inline else []
            grad = self._plain_grad(p) if inline else None
            if grad is not None and grad.is_contiguous():
                states = states + [grad]
                with_grad.append(spec.name)
            count = prune_count(sparsity, p.numel())
            if 0 < count < p.numel() and all(s.is_contiguous() for s in states):
                items.append((p, count, prior, *self._split_known(spec.name, states)))
                names.append(spec.name)
        done, grouped, zeroed, grads_zeroed = {}, {}, set(), set()
        for device, (items, names, groups, group_names, blocks, block_names, with_grad) in by_device.items():
            inline = compiled._native_on(device) and write
            decided = {names[i]: mask for i, mask in compiled(items, zero_weights=zero or inline).items()}
            done.update(decided)
            if zero or inline:
                zeroed.update(decided)
            if inline:
                grads_zeroed.update(n for n in with_grad if n in decided)
            by_groups = {group_names[i]: mask for i, mask in compiled.groups(groups).items()}
            if inline and by_groups:  # one pass per mask over weights, state and gradient together
                triples = []
                for name, mask in by_groups.items():
                    unknown, known = self._split_known(name, self._zero_targets(self._params[name]))
                    triples += [(t, mask, None) for t in unknown] + [(t, mask, old[name]) for t in known]
                zero_pruned_(*zip(*triples))
                zeroed.update(by_groups)
                grads_zeroed.update(by_groups)
            grouped.update(by_groups)
            by_blocks = {block_names[i]: mask for i, mask in compiled.blocks(blocks).items()}
            if write:
                zeroed.update(by_blocks)
                grads_zeroed.update(by_blocks)
            grouped.update(by_blocks)
        return done, grouped, zeroed, grads_zeroed

    def _split_known(self, name, tensors):
        """``tensors`` (the weights of ``name``, their optimizer state, their gradient) as ``(unknown,
        known)``: known are those still 0.0 wherever the current mask of ``name`` prunes, so that a new mask
        need only write the entries it prunes anew. The gradient is, when a hook or an event masked this
        very tensor and it has not changed since (its version counter); the optimizer state of prunekit's
        own element-wise optimizers (SGD, Adam, AdamW) always: every mask zeroes it, and an update from
        masked gradients and weights keeps it 0, which every step between events relies on. The weights
        never are here: an edit through ``p.data`` moves no version counter, and an event is where such an
        edit is caught (the native unstructured pass checks them itself and writes only new entries when
        they are clean). A regrowing method's pruned entries are live, and another optimizer's state is
        its own: neither is known."""
        if name not in self.masks or self.config.regrows:
            return list(tensors), []
        p = self._params[name]
        grad = self._plain_grad(p)
        ok = self._grad_ok.get(name)
        state_known = getattr(self._optimizer, "_prunekit_elementwise", False)
        unknown, known = [], []
        for t in tensors:
            if t is p:
                sure = False
            elif grad is not None and t is grad:
                sure = ok is not None and ok[0]() is grad and _version(grad) == ok[1]
            else:
                sure = state_known
            (known if sure else unknown).append(t)
        return unknown, known

    def _zero_targets(self, p):
        """What a new mask of ``p`` zeroes: the weights, their optimizer state, a dense gradient."""
        grad = self._plain_grad(p)
        return [p] + self._state_tensors(p) + ([] if grad is None else [grad])

    def _state_tensors(self, p):
        """The optimizer's per-parameter tensors shaped like ``p`` (momentum, moments), zeroed with its mask."""
        if self._optimizer is None:
            return []
        return [v for k, v in self._optimizer.state.get(p, {}).items()
                if k != DENSE_KEY and torch.is_tensor(v) and v.shape == p.shape and v.is_floating_point()]

    @torch.no_grad()
    def restore(self):
        """Masks = ``weight != 0``: sparsity already in a loaded model is kept (``restore_sparsity``)."""
        masks, restored = {}, {}
        for spec, p in self._specs:
            masks[spec.name] = p.detach() != 0
        kept = _dist.counts([(_dist.local(masks[s.name]), p) for s, p in self._specs])
        for (spec, p), k in zip(self._specs, kept):
            restored[spec.name] = 1.0 - k / max(1, p.numel())
        self._store.put(restored=restored)
        self._install(masks)

    def _install(self, masks, zeroed=(), grads_zeroed=(), split=False):
        """Store ``masks``; zero what they prune in the weights, gradients and optimizer state, except
        the weights and state of the tensors in ``zeroed`` and the gradients of those in ``grads_zeroed``
        (done already). ``split``: the current masks are the previous ones of a prune event: tensors known
        to be 0.0 under them (:meth:`_split_known`) get only the newly pruned entries written."""
        old = self.masks if split else {}
        triples, grads = [], set(grads_zeroed)
        for spec, p in self._specs:
            mask = masks.get(spec.name)
            if mask is None:
                continue
            targets = [] if spec.name in zeroed else [p] + self._state_tensors(p)
            if spec.name not in grads_zeroed and self._plain_grad(p) is not None:
                targets.append(p.grad)
                grads.add(spec.name)
            unknown, known = self._split_known(spec.name, targets) if spec.name in old else (targets, [])
            triples += [(t, mask, None) for t in unknown] + [(t, mask, old[spec.name]) for t in known]
        self._store.put(masks=masks)
        self._masks = None
        if triples:
            zero_pruned_(*zip(*triples))
        for spec, p in self._specs:
            if spec.name in masks:
                self._after_zeroing(spec.name, True, spec.name in grads)
        self.sync_hooks()

    # -- reports -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sparsity(self):
        """``(per_tensor, total)``: zeros / elements of each planned tensor, and overall by size."""
        per, zeros, total = {}, 0, 0
        # a DTensor's zeros are counted on each shard and summed over the ranks
        found = _dist.counts([(_dist.local(p.detach()) == 0, p) for _, p in self._specs])
        for (spec, p), z in zip(self._specs, found):
            per[spec.name] = z / max(1, p.numel())
            zeros, total = zeros + z, total + p.numel()
        return per, (zeros / total if total else 0.0)


def _masked_sparse(grad, mask):
    """A sparse COO gradient with the entries of pruned weights removed (values zeroed)."""
    grad = grad.coalesce()
    index = tuple(grad.indices())
    kept = mask[index]
    if kept.dim() < grad.values().dim():
        kept = kept.reshape(kept.shape + (1,) * (grad.values().dim() - kept.dim()))
    # the indices are those of a coalesced tensor: nothing to check, and already coalesced
    return torch.sparse_coo_tensor(grad.indices(), grad.values() * kept, grad.shape, is_coalesced=True,
                                   check_invariants=False)


def mask_nbytes(engine):
    """Bytes held by the engine's masks (1 per pruned-tensor element)."""
    return sum(_dist.local(m).numel() * m.element_size() for m in engine.masks.values())


def _version(t):
    """The version counter that in-place changes bump (a DTensor's: its local shard's)."""
    return _dist.local(t)._version


