"""Pruning optimizers for Keras 3: ``keras.optimizers.SGD`` / ``Adam`` plus the pruning arguments.

Works with ``model.fit`` and custom loops on the TensorFlow and PyTorch backends. Everything the
pruning needs is an optimizer variable, so ``model.save`` / ``keras.models.load_model`` and checkpoints
resume it: one mask per pruned kernel, a flag saying whether masks exist, and the sparsity each
tensor was restored with. ``optimizer.iterations`` is the step counter.

Names: a variable is named by its Keras path with ``/`` replaced by ``.`` (``dense/kernel`` becomes
``dense.kernel``); those are the names ``keywords_no_sparse`` and ``special_sparsity_dict`` match.
Layout: Keras kernels are ``(in, out)`` and ``(kh, kw, in, out)``; they are moved into the canonical
``(out, in, ...)`` layout for mask selection, so banks and N:M groups run along the input axis as in
every framework.

A step: at a prune event (decided from ``iterations``), the current kernels go to the host and
:class:`prunekit.core.pruner.HostPruner` returns the reference masks (``tf.numpy_function`` inside a
traced step on TensorFlow); pruned weights and their momentum/moment slots are zeroed. Then the base
update runs, and every pruned kernel is multiplied by its mask.
"""

import keras
import numpy as np
from keras import ops

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.core.patterns import channels_last_kernel_perm as canonical_perm
from prunekit.core.plan import resolve_plan
from prunekit.core.pruner import HostPruner
from prunekit.errors import ConfigError

__all__ = ["SGDSparse", "AdamSparse", "canonical_perm", "keras_name"]


def _inverse(perm):
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return tuple(inv)


def keras_name(variable):
    return variable.path.replace("/", ".")


class _SparseMixin:
    """Adds pruning to a Keras 3 optimizer class; ``_prune_slots`` names its per-variable slot lists."""

    _prune_slots = ()

    def __init__(self, *args, **kwargs):
        prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
        config = PruneConfig.from_kwargs(**prune_kwargs)  # validate before building anything
        super().__init__(*args, **base_kwargs)
        self._prune_kwargs = dict(prune_kwargs)
        self._prune_config = config
        if keras.backend.backend() not in ("tensorflow", "torch"):
            raise ConfigError(f"prunekit.keras supports the TensorFlow and PyTorch backends; this Keras runs on "
                              f"{keras.backend.backend()!r} (set KERAS_BACKEND)")

    # -- construction ----------------------------------------------------------------------------
    def build(self, variables):
        super().build(variables)
        config = self._prune_config
        named = [(keras_name(v), v) for v in variables]
        shapes = [(n, tuple(np.array(v.shape)[list(canonical_perm(len(v.shape)))])) for n, v in named]
        self._plan = resolve_plan(shapes, config)
        self._host = HostPruner(self._plan, config)
        by_name = dict(named)
        self._pruned = [(spec.name, by_name[spec.name]) for spec in self.plan]
        self._masks = [self.add_variable_from_reference(v, name="prune_mask", initializer="ones")
                       for _, v in self._pruned]
        self._have_masks = self.add_variable(shape=(), dtype="int32", name="prune_have_masks")
        self._restored = self.add_variable(shape=(max(1, len(self._pruned)),), dtype="float32",
                                           name="prune_restored")

    @property
    def plan(self):
        """The resolved plan (which variables, which target, which pattern).

        Keras builds an optimizer on its model's variables at the first ``fit`` / ``train_on_batch``; to see
        the plan before training, build it yourself: ``optimizer.build(model.trainable_variables)``.
        """
        plan = getattr(self, "_plan", None)
        if plan is None:
            raise ConfigError(f"{type(self).__name__}.plan is known once the optimizer is built on the model's "
                              "variables: after the first model.fit(...), or call "
                              "optimizer.build(model.trainable_variables) first")
        return plan

    @property
    def _prune_active(self):
        return not self._prune_config.is_noop and len(self.plan) > 0

    def get_config(self):
        config = super().get_config()
        extra = dict(self._prune_kwargs)
        if "pattern" in extra and not isinstance(extra["pattern"], str):
            extra["pattern"] = extra["pattern"].spec()
        config.update(extra)
        return config

    # -- the step ----------------------------------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        if not self.built and trainable_variables is not None:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        if self.built and self._prune_active:
            self._before_update()
        result = super().apply(grads, trainable_variables)
        if self.built and self._prune_active:
            for (_, v), m in zip(self._pruned, self._masks):
                v.assign(v * ops.cast(m, v.dtype))
        return result

    def _before_update(self):
        step = ops.convert_to_tensor(self.iterations)
        have = ops.convert_to_tensor(self._have_masks)
        if self._prune_config.restore_sparsity:
            ops.cond(ops.logical_and(ops.equal(have, 0), ops.equal(step, 0)), self._restore, lambda: None)
            have = ops.convert_to_tensor(self._have_masks)
        events = ops.convert_to_tensor(np.array(self._prune_config.schedule.events(), dtype="int64"))
        due = ops.any(ops.equal(events, ops.cast(step, "int64")))
        if self._prune_config.fix_sparsity:
            due = ops.logical_and(due, ops.equal(have, 0))
        ops.cond(due, self._event, lambda: None)

    def _restore(self):
        restored = []
        for (_, v), m in zip(self._pruned, self._masks):
            kept = ops.cast(ops.not_equal(v, 0), m.dtype)
            m.assign(kept)
            restored.append(1.0 - ops.mean(ops.cast(kept, "float32")))
        if restored:
            self._restored.assign(ops.stack(restored))
        self._have_masks.assign(1)

    def _host_masks(self, step, restored, *arrays):
        n = len(self._pruned)
        weights = {name: np.asarray(a) for (name, _), a in zip(self._pruned, arrays[:n])}
        priors = {name: np.asarray(a) > 0 for (name, _), a in zip(self._pruned, arrays[n:])}
        rest = {name: float(r) for (name, _), r in zip(self._pruned, np.asarray(restored))}
        try:
            masks = self._host.masks(int(step), weights, priors, rest)
        except ValueError as e:
            raise ValueError(f"prunekit.keras: {e}") from None
        return [masks[name] for name, _ in self._pruned]

    def _event(self):
        perms = [canonical_perm(len(v.shape)) for _, v in self._pruned]
        inputs = [ops.transpose(v, p) for (_, v), p in zip(self._pruned, perms)]
        inputs += [ops.transpose(m, p) for m, p in zip(self._masks, perms)]
        step = ops.convert_to_tensor(self.iterations)
        restored = ops.convert_to_tensor(self._restored)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            masks = tf.numpy_function(self._host_masks, [step, restored] + inputs, [tf.bool] * len(self._pruned),
                                      stateful=True)
            masks = [tf.ensure_shape(m, x.shape) for m, x in zip(masks, inputs)]
        else:
            masks = self._host_masks(ops.convert_to_numpy(step), ops.convert_to_numpy(restored),
                                     *[ops.convert_to_numpy(x) for x in inputs])
        for (name, v), mask_var, mask, perm in zip(self._pruned, self._masks, masks, perms):
            kept = ops.cast(ops.transpose(ops.convert_to_tensor(mask), _inverse(perm)), v.dtype)
            mask_var.assign(kept)
            v.assign(v * kept)
            index = self._get_variable_index(v)
            for slot_list in self._prune_slots:
                slots = getattr(self, slot_list, None)
                if slots and slots[index] is not None:
                    slots[index].assign(slots[index] * ops.cast(kept, slots[index].dtype))
        self._have_masks.assign(1)

    # -- reports -----------------------------------------------------------------------------------
    def sparsity(self):
        """``(per_tensor: dict[name, float], total: float)`` measured on the kernels."""
        per, zeros, total = {}, 0, 0
        for name, v in self._pruned:
            w = ops.convert_to_numpy(v)
            per[name] = float((w == 0).mean())
            zeros, total = zeros + int((w == 0).sum()), total + w.size
        return per, (zeros / total if total else 0.0)


def _base(name):
    """The class Keras itself instantiates for ``keras.optimizers.<name>`` on this backend.

    On the PyTorch backend ``keras.optimizers.SGD()`` returns a foreach-based ``TorchSGD`` (picked in
    ``TorchOptimizer.__new__``), but never for a subclass; deriving from it keeps a pruning optimizer
    at target 0 bit-identical to what the user had.
    """
    if keras.backend.backend() == "torch":
        try:
            from keras.src.backend.torch.optimizers import torch_adam, torch_sgd
            return {"SGD": torch_sgd.SGD, "Adam": torch_adam.Adam}[name]
        except (ImportError, AttributeError):  # a Keras without them: the generic class is used
            pass
    return getattr(keras.optimizers, name)


def _doc(base):
    return (f"``keras.optimizers.{base}`` that prunes on a schedule. Every ``{base}`` argument keeps its "
            f"name and default; the pruning arguments are those of SPEC.md: {', '.join(PRUNE_ARGUMENTS)}.")


@keras.saving.register_keras_serializable(package="prunekit")
class SGDSparse(_SparseMixin, _base("SGD")):
    __doc__ = _doc("SGD")
    _prune_slots = ("momentums",)


@keras.saving.register_keras_serializable(package="prunekit")
class AdamSparse(_SparseMixin, _base("Adam")):
    __doc__ = _doc("Adam")
    _prune_slots = ("_momentums", "_velocities", "_velocity_hats")
