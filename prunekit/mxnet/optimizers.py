"""Pruning optimizers for MXNet Gluon: ``NAGSparse``, ``NadamSparse``, ``SGDSparse``.

Subclasses of ``mxnet.optimizer.NAG`` / ``Nadam`` / ``SGD``, registered, so both
``gluon.Trainer(params, NAGSparse(...))`` and ``gluon.Trainer(params, 'nagsparse', {...})`` work.
Parameter names are Gluon's own (``collect_params()`` keys such as ``dense0_weight``); Gluon weights
are already in the canonical ``(out, in, *spatial)`` layout.

State: each pruned parameter's optimizer state becomes ``[mask, pruning info, base state]``, so
``Trainer.save_states`` / ``load_states`` checkpoint the masks and the step (the per-parameter
update count MXNet keeps). ``restore_sparsity`` reads ``w != 0`` at the first update of each
parameter, whatever its (possibly restored) update count. At a prune event the mask comes from the
numpy reference (:class:`prunekit.core.pruner.HostPruner`; MXNet runs eagerly, so the weight is read
to the host); pruned weights and every array of their state (momentum, Nadam's moments, the float32
master copy of ``multi_precision``) are zeroed. Before each base update the gradient of pruned
entries is zeroed in place (so their state stays 0) and, with ``L1_regularization``,
``l1_strength * sign(w) / rescale_grad`` is added, so that after MXNet's rescaling the step sees
``l1_strength * sign(w)`` as torch's does (MXNet's ``clip_gradient`` then clips the sum). After the
base update the weight (and its master copy) is multiplied by its mask. With ``multi_precision=True``
and float16 weights, masks are computed from the float32 master copy.
With nothing to prune the state is the base optimizer's, untouched.
``Global()`` is not supported here (MXNet updates one parameter at a time).
"""

import mxnet as mx
import numpy as np

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.core.plan import resolve_plan
from prunekit.core.pruner import HostPruner
from prunekit.errors import ConfigError

__all__ = ["NAGSparse", "NadamSparse", "SGDSparse"]


class _SparseMixin:
    def __init__(self, **kwargs):
        prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
        self._prune_config = PruneConfig.from_kwargs(**prune_kwargs)
        self._prune_config.refuse_regrowing("prunekit.mxnet")
        if self._prune_config.pattern.is_global:
            raise ConfigError("prunekit.mxnet does not support the Global pattern (MXNet updates one parameter at "
                              "a time); use Unstructured, BankBalanced, NM or Block")
        super().__init__(**base_kwargs)
        self._prune_plan = None

    # -- names and plan ------------------------------------------------------------------------------
    def _name(self, index):
        if index in self.param_dict:
            return self.param_dict[index].name
        if index in self.idx2name:
            return self.idx2name[index]
        raise ConfigError(f"parameter {index} has no name: use gluon.Trainer (which passes the parameters) "
                          "or pass param_idx2name")

    def _plan(self):
        if self._prune_plan is None:
            items = sorted(self.param_dict.items()) if self.param_dict else sorted(self.idx2name.items())
            named = [(p.name, tuple(p.shape)) for _, p in items] if self.param_dict else [(n, None) for _, n in items]
            if any(shape is None for _, shape in named):
                raise ConfigError("prunekit.mxnet needs the parameters' shapes: use gluon.Trainer")
            self._prune_plan = resolve_plan(named, self._prune_config)
            # the plan's names by position: Gluon renames the parameters of a rebuilt network, and
            # Trainer.load_states brings back this (pickled) optimizer with its plan
            self._prune_index = {name: index for (index, _), (name, _) in zip(items, named)}
            self._host = HostPruner(self._prune_plan, self._prune_config)
        return self._prune_plan

    @property
    def plan(self):
        return self._plan()

    def _planned(self, index):
        return not self._prune_config.is_noop and self._name(index) in self._plan().names

    # -- state -----------------------------------------------------------------------------------------
    def create_state_multi_precision(self, index, weight):
        base = super().create_state_multi_precision(index, weight)
        if not self._planned(index):
            return base
        mask = mx.nd.ones(weight.shape, ctx=weight.context, dtype="uint8")  # one byte per parameter
        return [mask, {"name": self._name(index), "have_masks": False, "restored": 0.0}, base]

    @staticmethod
    def _pruned_state(state):
        """A state this optimizer wrapped: ``[mask, info, base]`` (the tensor's name travels in ``info``,
        because Gluon renames parameters of a rebuilt network while a saved state keeps its plan)."""
        return isinstance(state, list) and len(state) == 3 and isinstance(state[1], dict) and "have_masks" in state[1]

    # -- the step ---------------------------------------------------------------------------------------
    def _master(self, weight, base):
        """The float32 master copy of a float16 weight under ``multi_precision``, else None. SGD and NAG
        keep ``(state, master)``; the generic wrapper (Nadam) keeps ``(master, state)``."""
        if not (self.multi_precision and weight.dtype == np.float16 and isinstance(base, (tuple, list))):
            return None
        return base[1] if isinstance(self, (mx.optimizer.SGD, mx.optimizer.NAG)) else base[0]

    @staticmethod
    def _mask_arrays(arrays, mask, shape):
        """Multiply every array of ``shape`` in a (nested) state by the mask, in its own dtype."""
        if isinstance(arrays, (list, tuple)):
            for a in arrays:
                _SparseMixin._mask_arrays(a, mask, shape)
        elif isinstance(arrays, mx.nd.NDArray) and arrays.shape == shape:
            arrays[:] = arrays * (mask if mask.dtype == arrays.dtype else mask.astype(arrays.dtype))

    def _before(self, index, weight, grad, state):
        mask, info, base = state
        name = info["name"]
        self._plan()
        master = self._master(weight, base)
        full = master if master is not None else weight  # the weight in full precision
        step = self._index_update_count.get(index, self.begin_num_update)
        if self._prune_config.restore_sparsity and not info["have_masks"]:
            kept = full != 0
            mask[:] = kept.astype(mask.dtype)
            info.update(have_masks=True, restored=1.0 - float(kept.mean().asscalar()))
        if self._host.is_event(step, info["have_masks"]):
            prior = mask.asnumpy() > 0
            try:
                new = self._host.mask(name, step, full.asnumpy(), prior, {name: info["restored"]})
            except ValueError as e:
                raise ValueError(f"prunekit.mxnet: {e}") from None
            mask[:] = mx.nd.array(new.astype(np.float32), ctx=weight.context, dtype=mask.dtype)
            self._mask_arrays([weight, base], mask, weight.shape)
            info["have_masks"] = True
        if info["have_masks"]:
            self._mask_arrays(grad, mask, weight.shape)
        if self._prune_config.L1_regularization:
            scale = self._prune_config.l1_strength / self.rescale_grad
            grad[:] = grad + (mx.nd.sign(full) * scale).astype(grad.dtype)

    def update_multi_precision(self, index, weight, grad, state):
        many = isinstance(index, (list, tuple))
        indices, weights, grads, states = (index, weight, grad, state) if many else ([index], [weight], [grad], [state])
        base_states = []
        for i, w, g, s in zip(indices, weights, grads, states):
            if self._pruned_state(s):
                self._before(i, w, g, s)
                base_states.append(s[2])
            else:
                base_states.append(s)
        self._in_base_update = True  # the base's update_multi_precision calls self.update
        try:
            if many:
                super().update_multi_precision(list(indices), list(weights), list(grads), base_states)
            else:
                super().update_multi_precision(index, weight, grad, base_states[0])
        finally:
            self._in_base_update = False
        for w, s in zip(weights, states):
            if self._pruned_state(s):
                master = self._master(w, s[2])
                self._mask_arrays([w] + ([master] if master is not None else []), s[0], w.shape)

    def update(self, index, weight, grad, state):
        if getattr(self, "_in_base_update", False):
            return super().update(index, weight, grad, state)
        return self.update_multi_precision(index, weight, grad, state)

    def sparsity(self):
        """``(per_tensor, total)`` of the planned parameters, read from the Trainer's parameters."""
        per, zeros, total = {}, 0, 0
        for name in self._plan().names:
            w = self.param_dict[self._prune_index[name]].data().asnumpy()
            per[name] = float((w == 0).mean())
            zeros, total = zeros + int((w == 0).sum()), total + w.size
        return per, (zeros / total if total else 0.0)


def _doc(base):
    return (f"``mxnet.optimizer.{base}`` that prunes on a schedule; every ``{base}`` argument keeps its name. "
            f"Pruning arguments: {', '.join(PRUNE_ARGUMENTS)}.")


@mx.optimizer.register
class NAGSparse(_SparseMixin, mx.optimizer.NAG):
    __doc__ = _doc("NAG")


@mx.optimizer.register
class NadamSparse(_SparseMixin, mx.optimizer.Nadam):
    __doc__ = _doc("Nadam")


@mx.optimizer.register
class SGDSparse(_SparseMixin, mx.optimizer.SGD):
    __doc__ = _doc("SGD")
