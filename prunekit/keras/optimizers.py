"""Pruning optimizers for Keras 3: ``keras.optimizers.SGD`` / ``Adam`` plus the pruning arguments.

Works with ``model.fit`` (``jit_compile=True`` included) and custom loops on the TensorFlow and PyTorch
backends. Everything the pruning needs is an optimizer variable, so ``model.save`` /
``keras.models.load_model`` and checkpoints resume it: one mask per pruned kernel, a flag saying whether
masks exist, and the sparsity each tensor was restored with. Masks are ``uint8``, one byte per parameter. ``optimizer.iterations`` is the step counter
(with ``gradient_accumulation_steps`` it counts real updates, as Keras's own property does).

Names: a variable is named by its Keras path with ``/`` replaced by ``.`` (``net/h/kernel`` becomes
``net.h.kernel``); those are the names ``keywords_no_sparse`` and ``special_sparsity_dict`` match. Keras
may name a reloaded model's variables differently (``load_model`` drops a Sequential's own name), so the
names and shapes the optimizer was built with are part of its config: a reloaded optimizer plans with
them when the variables it is built on have the same count and shapes.
Layout: Keras kernels are ``(in, out)`` and ``(kh, kw, in, out)``; they are moved into the canonical
``(out, in, ...)`` layout for mask selection, so banks and N:M groups run along the input axis as in
every framework.

A step (``apply``): at the first update, with ``restore_sparsity``, masks become ``kernel != 0``. At a prune
event the masks are computed with ``keras.ops`` inside the step (:mod:`prunekit.keras._select`, the
reference selection), pruned weights and their optimizer state (momenta, moments, gradient accumulators,
EMA averages) are zeroed. Gradients of pruned entries are then zeroed before Keras clips, accumulates
or applies them; ``L1_regularization`` adds ``l1_strength * sign(w)`` after clipping (where torch adds
it: in the step, after the user's clipping). After the base update every pruned kernel is multiplied
by its mask.
"""

from types import SimpleNamespace

import keras
import numpy as np
from keras import ops

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.core.patterns import channels_last_kernel_perm as canonical_perm
from prunekit.core.plan import resolve_plan
from prunekit.errors import ConfigError, PruningRuntimeError
from prunekit.keras import _select

__all__ = ["SGDSparse", "AdamSparse", "canonical_perm", "keras_name"]

#: Per-variable state every Keras optimizer may hold, zeroed for pruned entries at an event.
_COMMON_SLOTS = ("_accumulated_gradients", "_model_variables_moving_average")


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


def keras_name(variable):
    return variable.path.replace("/", ".")


def _canonical_shape(variable):
    return tuple(int(d) for d in np.array(variable.shape)[list(canonical_perm(len(variable.shape)))])


def _masked_gradient(grad, mask):
    if keras.backend.backend() == "tensorflow" and type(grad).__name__ == "IndexedSlices":
        import tensorflow as tf  # an embedding's gradient: only the looked-up rows
        rows = ops.cast(ops.take(mask, grad.indices, axis=0), grad.values.dtype)
        return tf.IndexedSlices(grad.values * rows, grad.indices, grad.dense_shape)
    return grad * ops.cast(mask, grad.dtype)


def _check_finite(name, weight, step):
    """NaN/inf weights cannot be ranked. TF: an in-graph assert (XLA compiles asserts away, so under
    ``jit_compile`` NaN entries rank highest and are kept); PyTorch backend: raised here."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        if tf.executing_eagerly():
            if not bool(tf.reduce_all(tf.math.is_finite(weight))):
                raise PruningRuntimeError(f"{name!r} holds NaN or inf at step {int(step)}; masks cannot be ranked")
            return
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(weight)),
                            [f"PruningRuntimeError: {name!r} holds NaN or inf at step", step,
                             "; masks cannot be ranked"])
        return
    if not bool(ops.all(ops.isfinite(weight))):
        raise PruningRuntimeError(f"{name!r} holds NaN or inf at step {int(step)}; masks cannot be ranked")


class _SparseMixin:
    """Adds pruning to a Keras 3 optimizer class; ``_prune_slots`` names its per-variable slot lists."""

    _prune_slots = ()

    def __init__(self, *args, prune_variables=None, **kwargs):
        prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
        config = PruneConfig.from_kwargs(**prune_kwargs)  # validate before building anything
        config.refuse_regrowing("prunekit.keras")
        super().__init__(*args, **base_kwargs)
        self._prune_kwargs = dict(prune_kwargs)
        self._prune_config = config
        self._saved_variables = [(str(n), tuple(s)) for n, s in prune_variables] if prune_variables else None
        if keras.backend.backend() not in ("tensorflow", "torch"):
            raise ConfigError(f"prunekit.keras supports the TensorFlow and PyTorch backends; this Keras runs on "
                              f"{keras.backend.backend()!r} (set KERAS_BACKEND)")

    # -- construction ----------------------------------------------------------------------------
    def build(self, variables):
        super().build(variables)
        config = self._prune_config
        named = [(keras_name(v), _canonical_shape(v)) for v in variables]
        if self._saved_variables is not None and [s for _, s in self._saved_variables] == [s for _, s in named]:
            named = list(self._saved_variables)  # a reloaded model: plan on the names it was built with
        self._variable_names = named
        self._plan = resolve_plan(named, config)
        by_name = {name: v for (name, _), v in zip(named, variables)}
        # model variables are held out of Keras's attribute tracking, else they count as optimizer variables
        self._refs = SimpleNamespace(pruned=[(spec, by_name[spec.name]) for spec in self.plan], applying=None)
        # one byte per parameter (a float mask would take the kernel's 4)
        self._masks = [self.add_variable(shape=v.shape, dtype="uint8", initializer="ones",
                                         name=v.path.replace("/", "_") + "_prune_mask") for _, v in self._pruned]
        self._have_masks = self.add_variable(shape=(), dtype="int32", name="prune_have_masks")
        self._restored = self.add_variable(shape=(max(1, len(self._pruned)),), dtype="float32",
                                           name="prune_restored")
        self._refs.mask_by_index = {self._get_variable_index(v): m for (_, v), m in zip(self._pruned, self._masks)}
        self._event_steps, self._event_factors = _select.schedule_factors(config.schedule)

    @property
    def _pruned(self):
        """``[(TensorSpec, variable)]`` of the planned kernels, in plan order."""
        return self._refs.pruned

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
        names = getattr(self, "_variable_names", None) or self._saved_variables
        if names:
            config["prune_variables"] = [[n, list(s)] for n, s in names]
        return config

    # -- the step ----------------------------------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        if not self.built and trainable_variables is not None:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        if not (self.built and self._prune_active):
            return super().apply(grads, trainable_variables)
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        self._before_update()
        grads = [g if g is None or self._mask_of(v) is None else _masked_gradient(g, self._mask_of(v))
                 for g, v in zip(grads, variables)]
        result = super().apply(grads, trainable_variables)
        for (_, v), m in zip(self._pruned, self._masks):
            v.assign(v * ops.cast(m, v.dtype))
        return result

    def _mask_of(self, variable):
        index = self._trainable_variables_indices.get(self._var_key(variable))
        return self._refs.mask_by_index.get(index)

    def _backend_apply_gradients(self, grads, trainable_variables):
        if hasattr(self, "_refs"):
            self._refs.applying = list(trainable_variables)  # _clip_gradients adds L1 for these
        try:
            return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            if hasattr(self, "_refs"):
                self._refs.applying = None

    def _clip_gradients(self, grads):
        grads = super()._clip_gradients(grads)
        variables = self._refs.applying if hasattr(self, "_refs") else None
        if not self._prune_config.L1_regularization or not variables or not self._prune_active:
            return grads
        strength = self._prune_config.l1_strength
        return [g if g is None or self._mask_of(v) is None
                else ops.add(ops.convert_to_tensor(g), ops.multiply(ops.cast(strength, g.dtype), ops.sign(v)))
                for g, v in zip(grads, variables)]

    def _before_update(self):
        config = self._prune_config
        if config.restore_sparsity:  # once, at the first update this optimizer runs, whatever its count
            ops.cond(ops.equal(self._have_masks, 0), self._restore, lambda: None)
        step = ops.cast(self.iterations, "int64")
        due = ops.any(ops.equal(ops.convert_to_tensor(self._event_steps), step))
        if self.gradient_accumulation_steps:  # one event per real update, at its first micro-step
            due = ops.logical_and(due, ops.equal(ops.mod(self._iterations, self.gradient_accumulation_steps), 0))
        if config.fix_sparsity:
            due = ops.logical_and(due, ops.equal(self._have_masks, 0))
        ops.cond(due, self._event, lambda: None)

    def _restore(self):
        restored = []
        for (_, v), m in zip(self._pruned, self._masks):
            kept = ops.cast(ops.not_equal(v, 0), m.dtype)
            m.assign(kept)
            restored.append(1.0 - ops.mean(ops.cast(kept, "float32")))
        self._restored.assign(ops.stack(restored))
        self._have_masks.assign(1)

    # -- prune events: the reference selection with keras.ops ------------------------------------
    def _initial_sparsity(self, restored, indices):
        """``core.pruner.initial_sparsity`` in float64, summed in the same order."""
        sizes = [self._pruned[j][0].numel for j in indices]
        weighted = None
        for j, size in zip(indices, sizes):
            term = ops.multiply(restored[j], float(size))
            weighted = term if weighted is None else ops.add(weighted, term)
        weighted = ops.divide(weighted, float(sum(sizes)))
        return ops.maximum(ops.cast(self._prune_config.init_sparsity, "float64"), weighted)

    def _sparsity(self, factor, restored, indices):
        final = ops.cast(self._pruned[indices[0]][0].target, "float64")
        initial = self._initial_sparsity(restored, indices)
        return ops.add(final, ops.multiply(ops.subtract(initial, final), factor))

    def _event(self):
        step = ops.cast(self.iterations, "int64")
        factor = ops.sum(ops.where(ops.equal(ops.convert_to_tensor(self._event_steps), step),
                                   ops.convert_to_tensor(self._event_factors), 0.0))
        restored = ops.cast(self._restored, "float64")
        perms = [canonical_perm(len(v.shape)) for _, v in self._pruned]
        weights = [ops.transpose(v, p) for (_, v), p in zip(self._pruned, perms)]
        priors = [ops.greater(ops.transpose(m, p), 0) for m, p in zip(self._masks, perms)]
        for (spec, _), w in zip(self._pruned, weights):
            _check_finite(spec.name, w, step)
        masks = [None] * len(self._pruned)
        glob = [j for j, (spec, _) in enumerate(self._pruned) if spec.pattern.is_global]
        for j, (spec, _) in enumerate(self._pruned):
            if j not in glob:
                masks[j] = self._tensor_mask(spec, weights[j], priors[j], self._sparsity(factor, restored, [j]))
        if glob:
            sparsity = self._sparsity(factor, restored, glob)
            for j, mask in zip(glob, self._global_masks([weights[j] for j in glob], [priors[j] for j in glob],
                                                        sparsity)):
                masks[j] = mask
        for (_, v), mask_var, mask, perm in zip(self._pruned, self._masks, masks, perms):
            self._set_mask(v, mask_var, ops.transpose(mask, _inverse(perm)))
        self._have_masks.assign(1)

    @staticmethod
    def _tensor_mask(spec, weight, prior, sparsity):
        layout = spec.pattern.layout(spec.shape)
        scores = _select.group_scores(weight, layout)
        prior_groups = ops.greater(_select.group_scores(ops.cast(prior, "float32"), layout), 0)
        pruned_before = ops.sum(ops.cast(ops.logical_not(prior_groups), "int32"), axis=1)
        counts = _select.prune_counts(sparsity, int(scores.shape[1]), pruned_before)
        scores = ops.where(prior_groups, scores, ops.cast(-1.0, keras.backend.standardize_dtype(scores.dtype)))
        pruned = _select.select(scores, counts)
        return ops.logical_and(ops.logical_not(_select.ungroup(pruned, layout, spec.shape)), prior)

    @staticmethod
    def _global_masks(weights, priors, sparsity):
        dtype = "float64" if any(keras.backend.standardize_dtype(w.dtype) == "float64" for w in weights) \
            else "float32"
        scores = ops.concatenate([ops.reshape(ops.abs(ops.cast(w, dtype)), (-1,)) for w in weights])[None, :]
        prior = ops.concatenate([ops.reshape(p, (-1,)) for p in priors])[None, :]
        pruned_before = ops.sum(ops.cast(ops.logical_not(prior), "int32"), axis=1)
        counts = _select.prune_counts(sparsity, int(scores.shape[1]), pruned_before)
        pruned = _select.select(ops.where(prior, scores, ops.cast(-1.0, dtype)), counts)[0]
        masks, start = [], 0
        for w, p in zip(weights, priors):
            n = int(np.prod(tuple(w.shape)))
            masks.append(ops.logical_and(ops.logical_not(ops.reshape(pruned[start:start + n], tuple(w.shape))), p))
            start += n
        return masks

    def _set_mask(self, variable, mask_var, mask):
        kept = ops.cast(mask, variable.dtype)
        mask_var.assign(ops.cast(mask, mask_var.dtype))
        variable.assign(variable * kept)
        index = self._get_variable_index(variable)
        for slot_list in self._prune_slots + _COMMON_SLOTS:
            slots = getattr(self, slot_list, None)
            if slots and slots[index] is not None:
                slots[index].assign(slots[index] * ops.cast(kept, slots[index].dtype))

    # -- reports -----------------------------------------------------------------------------------
    def sparsity(self):
        """``(per_tensor: dict[name, float], total: float)`` measured on the kernels."""
        per, zeros, total = {}, 0, 0
        for spec, v in self._pruned:
            w = ops.convert_to_numpy(v)
            per[spec.name] = float((w == 0).mean())
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
