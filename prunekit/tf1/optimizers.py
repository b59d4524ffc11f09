"""Pruning optimizers for TensorFlow's v1 API (graph mode, ``tf.compat.v1.Session``).

``MomentumOptimizerSparse`` and ``AdamOptimizerSparse`` subclass ``tf.compat.v1.train.MomentumOptimizer``
and ``AdamOptimizer``; use them as the seed's example did: ``train_op = opt.minimize(loss,
global_step=global_step)``. Parameter names are the variable names (``conv2d/kernel:0``).

State is graph variables, so ``tf.compat.v1.train.Saver`` checkpoints it: a ``prune_mask`` slot per
pruned kernel (``uint8``: one byte per parameter), and, in a variable scope of each optimizer's own (``prunekit``, then ``prunekit_1`` for a
second optimizer in the same graph), ``have_masks``, ``restored`` (the sparsity each tensor was restored
with) and ``step`` (only when no ``global_step`` is passed). Prune events are graph ops driven by that
step: ``tf.cond`` on the step runs a ``tf.numpy_function`` that returns the reference masks of
:class:`prunekit.core.pruner.HostPruner`, then zeroes pruned weights and their slots. The gradients
given to ``apply_gradients`` are then masked (the base update never sees a pruned entry's gradient) and,
with ``L1_regularization``, get ``l1_strength * sign(w)``; after the base update every pruned kernel is
multiplied by its mask. ``restore_sparsity`` reads ``w != 0`` at the first update the optimizer runs,
whatever the (possibly restored) global step. Wrapped in
``tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer``, a skipped step (non-finite
gradients) runs none of this and does not advance the schedule.
"""

import numpy as np
import tensorflow as tf

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.core.patterns import channels_last_kernel_perm as canonical_perm
from prunekit.core.plan import resolve_plan
from prunekit.core.pruner import HostPruner

__all__ = ["MomentumOptimizerSparse", "AdamOptimizerSparse"]

v1 = tf.compat.v1


class _SparseMixin:
    _prune_slots = ()

    def __init__(self, *args, **kwargs):
        prune_kwargs, base_kwargs = PruneConfig.split_kwargs(kwargs)
        self._prune_config = PruneConfig.from_kwargs(**prune_kwargs)
        self._prune_config.refuse_regrowing("prunekit.tf1")
        super().__init__(*args, **base_kwargs)
        self.plan = None
        self._scopes = {}

    def _set_up(self, grads_and_vars, own_counter):
        """Plan the tensors of ``grads_and_vars`` and make this optimizer's variables; False at nothing to do."""
        config = self._prune_config
        named = [(v.name, v) for _, v in grads_and_vars]
        shapes = [(n, tuple(np.array(v.shape.as_list())[list(canonical_perm(v.shape.ndims))])) for n, v in named]
        if self.plan is None or self._planned_shapes != shapes:  # minimize() comes here twice: warn once
            self.plan, self._planned_shapes = resolve_plan(shapes, config), shapes
        if config.is_noop or not len(self.plan):
            return False
        by_name = dict(named)
        self._pruned = [(spec.name, by_name[spec.name]) for spec in self.plan]
        self._host = HostPruner(self.plan, config)
        self._counter = self._make_variables(own_counter)
        return True

    def compute_gradients(self, loss, var_list=None, **kwargs):
        """The base's gradients, those of pruned entries zeroed: a user who clips between
        ``compute_gradients`` and ``apply_gradients`` clips the kept entries only."""
        grads_and_vars = super().compute_gradients(loss, var_list=var_list, **kwargs)
        if not self._set_up([(g, v) for g, v in grads_and_vars if g is not None], own_counter=False):
            return grads_and_vars
        return self._mask_gradients(grads_and_vars)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
        if not self._set_up(grads_and_vars, own_counter=global_step is None):
            return super().apply_gradients(grads_and_vars, global_step=global_step, name=name)
        counter = self._counter
        step = tf.cast(global_step if global_step is not None else counter, tf.int64)
        # the event rewrites weights: it must run after the gradients have read them (as in torch)
        with tf.control_dependencies([g for g, _ in grads_and_vars]):
            before = self._before_update(step)
        with tf.control_dependencies([before]):
            grads_and_vars = self._add_l1(self._mask_gradients(grads_and_vars))
            update = super().apply_gradients(grads_and_vars, global_step=global_step, name=name)
        with tf.control_dependencies([update]):
            masked = [v.assign(v * tf.cast(m, v.dtype.base_dtype)) for (_, v), m in zip(self._pruned, self._masks)]
            if counter is not None:
                masked.append(counter.assign_add(1))
        return tf.group(update, *masked)

    def _make_variables(self, own_counter):
        """Masks (slots), flags and the step counter of *this* optimizer, in a ``prunekit`` scope of its own
        (``prunekit``, ``prunekit_1``, ... in build order), so two optimizers in one graph (a GAN) share
        nothing. Created outside any control flow (a loss-scale optimizer calls us inside a ``cond``)."""
        graph = v1.get_default_graph()
        scope = self._scopes.get(graph)
        with tf.init_scope():
            if scope is None:
                with v1.variable_scope(None, default_name="prunekit") as scope:
                    self._scopes[graph] = scope
            # the base optimizer's own slots, now, so that the event (built before the update) zeroes them;
            # the base update finds them and creates nothing twice
            self._create_slots([v for _, v in self._pruned])
            with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
                # one byte per parameter (a float mask would take the kernel's 4)
                self._masks = [self._get_or_make_slot_with_initializer(v, v1.ones_initializer(tf.uint8), v.shape,
                                                                       tf.uint8, "prune_mask", self._name)
                               for _, v in self._pruned]
                self._have_masks = v1.get_variable("have_masks", initializer=0, trainable=False, dtype=tf.int32)
                self._restored = v1.get_variable("restored", initializer=np.zeros(len(self._pruned), np.float32),
                                                 trainable=False)
                if own_counter:
                    return v1.get_variable("step", initializer=np.int64(0), trainable=False, dtype=tf.int64)
        return None

    def _mask_gradients(self, grads_and_vars):
        """Gradients of pruned entries to 0, so no momentum or moment of theirs grows between events."""
        masks = {id(v): m for (_, v), m in zip(self._pruned, self._masks)}
        out = []
        for g, v in grads_and_vars:
            m = masks.get(id(v))
            if m is not None and g is not None:
                if isinstance(g, tf.IndexedSlices):
                    rows = tf.cast(tf.gather(m, g.indices), g.values.dtype)
                    g = tf.IndexedSlices(g.values * rows, g.indices, g.dense_shape)
                else:
                    g = g * tf.cast(m, g.dtype)
            out.append((g, v))
        return out

    def _add_l1(self, grads_and_vars):
        """``l1_strength * sign(w)`` on the planned tensors, in the step, as torch adds it."""
        if not self._prune_config.L1_regularization:
            return grads_and_vars
        planned = {id(v) for _, v in self._pruned}
        strength = self._prune_config.l1_strength
        return [(tf.convert_to_tensor(g) + tf.cast(strength, v.dtype.base_dtype) * tf.sign(v)
                 if id(v) in planned else g, v) for g, v in grads_and_vars]

    def _before_update(self, step):
        config = self._prune_config
        ops = []
        if config.restore_sparsity:  # once, at the first update this optimizer runs, whatever the step
            first = tf.equal(self._have_masks.read_value(), 0)
            ops.append(tf.cond(first, self._restore, lambda: tf.constant(0)))
        with tf.control_dependencies(ops):
            due = tf.reduce_any(tf.equal(tf.constant(config.schedule.events(), tf.int64), step))
            if config.fix_sparsity:
                due = tf.logical_and(due, tf.equal(self._have_masks.read_value(), 0))
            return tf.cond(due, lambda: self._event(step), lambda: tf.constant(0))

    def _restore(self):
        assigns, restored = [], []
        for (_, v), m in zip(self._pruned, self._masks):
            kept = tf.cast(tf.not_equal(v, 0), m.dtype.base_dtype)
            assigns.append(m.assign(kept))
            restored.append(1.0 - tf.reduce_mean(tf.cast(kept, tf.float32)))
        assigns.append(self._restored.assign(tf.stack(restored)))
        assigns.append(self._have_masks.assign(1))
        with tf.control_dependencies(assigns):
            return tf.constant(0)

    def _host_masks(self, step, restored, *arrays):
        n = len(self._pruned)
        weights = {name: a for (name, _), a in zip(self._pruned, arrays[:n])}
        priors = {name: a > 0 for (name, _), a in zip(self._pruned, arrays[n:])}
        rest = {name: float(r) for (name, _), r in zip(self._pruned, restored)}
        masks = self._host.masks(int(step), weights, priors, rest)
        return [masks[name] for name, _ in self._pruned]

    def _event(self, step):
        perms = [canonical_perm(v.shape.ndims) for _, v in self._pruned]
        inputs = [tf.transpose(v, p) for (_, v), p in zip(self._pruned, perms)]
        inputs += [tf.transpose(m, p) for m, p in zip(self._masks, perms)]
        masks = tf.numpy_function(self._host_masks, [step, self._restored] + inputs,
                                  [tf.bool] * len(self._pruned), stateful=True)
        assigns = []
        for (_, v), m_var, mask, perm in zip(self._pruned, self._masks, masks, perms):
            kept = tf.cast(tf.transpose(tf.ensure_shape(mask, [v.shape[i] for i in perm]), np.argsort(perm)), v.dtype)
            assigns += [m_var.assign(tf.cast(kept, m_var.dtype.base_dtype)), v.assign(v * kept)]
            for slot_name in self._prune_slots:
                slot = self.get_slot(v, slot_name)
                if slot is not None:
                    assigns.append(slot.assign(slot * kept))
        assigns.append(self._have_masks.assign(1))
        with tf.control_dependencies(assigns):
            return tf.constant(0)

    def sparsity(self, session):
        """``(per_tensor, total)`` of the pruned kernels, read with ``session``."""
        values = session.run([v for _, v in self._pruned])
        per = {name: float((w == 0).mean()) for (name, _), w in zip(self._pruned, values)}
        zeros = sum(int((w == 0).sum()) for w in values)
        total = sum(w.size for w in values)
        return per, (zeros / total if total else 0.0)


def _doc(base):
    return (f"``tf.compat.v1.train.{base}`` that prunes on a schedule (graph mode). Every ``{base}`` argument "
            f"keeps its name; the pruning arguments: {', '.join(PRUNE_ARGUMENTS)}.")


class MomentumOptimizerSparse(_SparseMixin, v1.train.MomentumOptimizer):
    __doc__ = _doc("MomentumOptimizer")
    _prune_slots = ("momentum",)


class AdamOptimizerSparse(_SparseMixin, v1.train.AdamOptimizer):
    __doc__ = _doc("AdamOptimizer")
    _prune_slots = ("m", "v")
