"""TF1 (graph mode) checks, run in a fresh process: python tf1_check.py OUT.npz | mirrored

Prints one "<check> ok" line per check; tests/test_frameworks.py asserts on them. TABLE holds every
optimizer with its options: target 0 must be the base optimizer bit for bit, and a pruned run must hit
its target with every pruned entry's slots at 0.
"""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from common import PATTERNS, target, weights  # noqa: E402

from prunekit.core.masks import reference_global_masks  # noqa: E402

import prunekit.tf1 as pruning  # noqa: E402

v1 = tf.compat.v1
v1.disable_eager_execution()

TABLE = [
    ("momentum", v1.train.MomentumOptimizer, pruning.MomentumOptimizerSparse, dict(learning_rate=0.05, momentum=0.9)),
    ("momentum-nesterov", v1.train.MomentumOptimizer, pruning.MomentumOptimizerSparse,
     dict(learning_rate=0.05, momentum=0.9, use_nesterov=True)),
    ("adam", v1.train.AdamOptimizer, pruning.AdamOptimizerSparse, dict(learning_rate=0.01)),
    ("adam-betas", v1.train.AdamOptimizer, pruning.AdamOptimizerSparse,
     dict(learning_rate=0.01, beta1=0.5, beta2=0.9, epsilon=1e-4)),
]
PRUNE = dict(target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1, pattern="bank4")


def build(make_opt, seed=0, init=None):
    """A small conv + dense graph; returns (graph, train_op, optimizer, kernels, feeds, global_step)."""
    g = v1.Graph()
    with g.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 6, 6, 4])
        y = v1.placeholder(tf.int64, [None])
        w = init or {}
        with v1.variable_scope("conv2d"):
            k = v1.get_variable("kernel", initializer=w.get("conv", v1.glorot_uniform_initializer(seed=1)((3, 3, 4, 8))))
            b = v1.get_variable("bias", [8], initializer=v1.zeros_initializer())
        h = tf.reshape(tf.nn.relu(tf.nn.conv2d(x, k, 1, "VALID") + b), [-1, 128])
        with v1.variable_scope("dense"):
            d = v1.get_variable("kernel", initializer=w.get("dense", v1.glorot_uniform_initializer(seed=2)((128, 6))))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.matmul(h, d)))
        step = v1.train.get_or_create_global_step()
        opt = make_opt()
        train = opt.minimize(loss, global_step=step)
        saver = v1.train.Saver()
    return g, train, opt, [k, d], (x, y), step, saver


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((8, 6, 6, 4)).astype("float32"), rng.integers(0, 6, 8)) for _ in range(n)]


def run(built, data, restore=None, save=None):
    g, train, opt, kernels, (x, y), step, saver = built
    with v1.Session(graph=g) as s:
        s.run(v1.global_variables_initializer())
        if restore:
            saver.restore(s, restore)
        for bx, by in data:
            s.run(train, {x: bx, y: by})
        if save:
            saver.save(s, save)
        return s.run(kernels), (opt.sparsity(s) if hasattr(opt, "sparsity") and opt.plan and len(opt.plan) else None)


def slots_masked(built):
    """After a run: every pruned entry's slots (momentum, m, v) are 0. Returns the kernels' sparsity."""
    g, train, opt, kernels, (x, y), step, saver = built
    with v1.Session(graph=g) as s:
        s.run(v1.global_variables_initializer())
        for bx, by in batches(8):
            s.run(train, {x: bx, y: by})
        for (name, v), m in zip(opt._pruned, opt._masks):
            pruned = s.run(m) == 0
            for slot_name in opt._prune_slots:
                slot = opt.get_slot(v, slot_name)
                assert (s.run(slot)[pruned] == 0).all(), f"{slot_name} of {name} revived"
        return opt.sparsity(s)[1]


def check_table():
    data = batches(5)
    for label, base, sparse, kw in TABLE:
        a, _ = run(build(lambda: base(**kw)), data)
        b, _ = run(build(lambda: sparse(target_sparsity=0.0, **kw)), data)
        assert all(np.array_equal(p, q) for p, q in zip(a, b)), f"target 0 differs from {label}"
        total = slots_masked(build(lambda: sparse(**kw, **PRUNE)))
        assert abs(total - 0.75) < 1e-6, (label, total)
    for method in ("feedback", "sr-ste"):  # the regrowing methods are PyTorch's only: a clear refusal
        try:
            pruning.MomentumOptimizerSparse(0.1, 0.9, target_sparsity=0.5, method=method)
        except ValueError as e:
            assert f"method={method!r} is implemented for PyTorch only" in str(e) and "prunekit.tf1 supports" in str(e), e
        else:
            raise AssertionError(f"no error for method={method!r}")
    print("equivalence ok")
    print(f"table ok ({len(TABLE)} rows)")


def check_restore_nonzero_step():
    """restore_sparsity + fix_sparsity with a global step restored at 1000: the zeros are kept."""
    rng = np.random.default_rng(1)
    conv = rng.standard_normal((3, 3, 4, 8)).astype("float32")
    dense = rng.standard_normal((128, 6)).astype("float32")
    conv[np.abs(conv) < 0.8], dense[np.abs(dense) < 0.8] = 0, 0
    for sparse, kw in ((pruning.MomentumOptimizerSparse, dict(learning_rate=0.05, momentum=0.9)),
                       (pruning.AdamOptimizerSparse, dict(learning_rate=0.01))):
        g, train, opt, kernels, (x, y), step, saver = build(
            lambda: sparse(restore_sparsity=True, fix_sparsity=True, **kw), init={"conv": conv, "dense": dense})
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            s.run(step.assign(1000))
            before = [(w == 0).mean() for w in s.run(kernels)]
            for bx, by in batches(3):
                s.run(train, {x: bx, y: by})
            after = [(w == 0).mean() for w in s.run(kernels)]
        assert before == after and min(before) > 0.5, (before, after)
    print("restore at a restored step ok")


def gan(seed=0, which=("gen", "disc")):
    """Two sub-networks, one pruning optimizer each, no global_step: each counts its own steps."""
    g = v1.Graph()
    with g.as_default():
        ops, opts, kernels = [], {}, {}
        for name, shape, make in (("gen", (8, 16), lambda: pruning.AdamOptimizerSparse(
                0.01, target_sparsity=0.5, pretrain_step=1, sparse_step=2, frequency=1)),
                                  ("disc", (16, 4), lambda: pruning.MomentumOptimizerSparse(
                0.05, 0.9, target_sparsity=0.75, pretrain_step=2))):
            with v1.variable_scope(name):
                k = v1.get_variable("kernel", initializer=np.random.default_rng(shape[0]).standard_normal(shape)
                                    .astype("float32"))
            x = tf.constant(np.random.default_rng(seed).random((4, shape[0])).astype("float32"))
            kernels[name] = k
            if name in which:
                opts[name] = make()
                ops.append(opts[name].minimize(tf.reduce_mean(tf.square(tf.matmul(x, k) - 1.0)), var_list=[k]))
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            for _ in range(4):
                for op in ops:
                    s.run(op)
            return {n: s.run(kernels[n]) for n in which}


def check_two_optimizers():
    both = gan()
    alone = {**gan(which=("gen",)), **gan(which=("disc",))}
    for name, sparsity in (("gen", 0.5), ("disc", 0.75)):
        assert abs((both[name] == 0).mean() - sparsity) < 1e-6, (name, (both[name] == 0).mean())
        assert np.array_equal(both[name], alone[name]), f"{name} differs when trained beside the other optimizer"
    print("two optimizers ok")


def check_l1():
    """L1 by hand: w <- w - lr * (g + l1 * sign(w)) on the kernel; the bias gets no L1 term."""
    g = v1.Graph()
    rng = np.random.default_rng(2)
    w0, b0, xv = rng.standard_normal((16, 6)).astype("float32"), rng.standard_normal(6).astype("float32"), \
        rng.random((4, 16)).astype("float32")
    with g.as_default():
        with v1.variable_scope("dense"):
            k = v1.get_variable("kernel", initializer=w0)
            b = v1.get_variable("bias", initializer=b0)
        loss = tf.reduce_sum(tf.square(tf.matmul(tf.constant(xv), k) + b))
        grads = tf.gradients(loss, [k, b])
        opt = pruning.MomentumOptimizerSparse(0.1, 0.0, L1_regularization=True, l1_strength=0.5)
        train = opt.apply_gradients(zip(grads, [k, b]))
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            gk, gb = s.run(grads)
            s.run(train)
            k1, b1 = s.run([k, b])
    assert np.allclose(k1, w0 - np.float32(0.1) * (gk + np.float32(0.5) * np.sign(w0)), rtol=1e-6, atol=1e-7)
    assert np.allclose(b1, b0 - np.float32(0.1) * gb, rtol=1e-6, atol=1e-7)
    print("l1 ok")


def check_clipping():
    """compute_gradients -> clip_by_global_norm -> apply_gradients: after an event the clipped gradients of
    pruned entries are 0, so the norm is the kept entries' norm."""
    g = v1.Graph()
    rng = np.random.default_rng(6)
    with g.as_default():
        k = v1.get_variable("dense/kernel", initializer=rng.standard_normal((16, 6)).astype("float32"))
        x = tf.constant(rng.random((4, 16)).astype("float32"))
        opt = pruning.AdamOptimizerSparse(0.01, target_sparsity=0.9)
        grads_and_vars = opt.compute_gradients(tf.reduce_sum(tf.square(tf.matmul(x, k) - 1.0)))
        clipped, norm = tf.clip_by_global_norm([gv[0] for gv in grads_and_vars], 0.01)
        train = opt.apply_gradients(zip(clipped, [gv[1] for gv in grads_and_vars]))
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            s.run(train)  # step 0: the event
            mask = s.run(opt._masks[0])
            grad, n = s.run([grads_and_vars[0][0], norm])
            s.run(train)
            m, v = s.run([opt.get_slot(k, "m"), opt.get_slot(k, "v")])
    assert (grad[mask == 0] == 0).all() and np.isclose(n, np.linalg.norm(grad)), "clipping saw pruned gradients"
    assert (m[mask == 0] == 0).all() and (v[mask == 0] == 0).all(), "Adam moments of pruned entries grew"
    print("clipping ok")


def check_loss_scaling():
    """MixedPrecisionLossScaleOptimizer: target 0 = the wrapped base; a skipped step (inf gradients) does not
    advance the schedule; a pruned run hits its target."""
    wrap = v1.mixed_precision.MixedPrecisionLossScaleOptimizer
    data = batches(5)
    a, _ = run(build(lambda: wrap(v1.train.MomentumOptimizer(0.05, 0.9), "dynamic")), data)
    b, _ = run(build(lambda: wrap(pruning.MomentumOptimizerSparse(0.05, 0.9, target_sparsity=0.0), "dynamic")), data)
    assert all(np.array_equal(p, q) for p, q in zip(a, b)), "loss scaling: target 0 differs from the base"
    inner = []
    built = build(lambda: inner.append(pruning.AdamOptimizerSparse(0.01, target_sparsity=0.6, pretrain_step=1))
                  or wrap(inner[-1], "dynamic"))
    g, train, opt, kernels, (x, y), step, saver = built
    bad = batches(1)[0][0].copy()
    bad[0, 0, 0, 0] = np.inf
    with v1.Session(graph=g) as s:
        s.run(v1.global_variables_initializer())
        (bx, by), = batches(1)
        s.run(train, {x: bx, y: by})  # step 0: dense
        s.run(train, {x: bad, y: by})  # skipped: not a step, no event
        assert s.run(step) == 1 and (s.run(kernels[0]) != 0).all(), "a skipped step advanced the schedule"
        s.run(train, {x: bx, y: by})  # step 1: the event
        total = inner[0].sparsity(s)[1]
    assert abs(total - 0.6) < 1e-3, total  # per-tensor rounding of 0.6 * size
    print("loss scaling ok")


def check_pruning_and_resume(tmp):
    kw = dict(learning_rate=0.05, momentum=0.9, target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1,
              pattern="bank4")
    data = batches(8)
    straight, (per, total) = run(build(lambda: pruning.MomentumOptimizerSparse(**kw)), data)
    assert abs(total - 0.75) < 1e-6, per
    path = os.path.join(tmp, "ckpt")
    run(build(lambda: pruning.MomentumOptimizerSparse(**kw)), data[:4], save=path)
    resumed, _ = run(build(lambda: pruning.MomentumOptimizerSparse(**kw)), data[4:], restore=path)
    assert all(np.array_equal(p, q) for p, q in zip(straight, resumed)), "Saver resume changed the result"
    adam, (_, total) = run(build(lambda: pruning.AdamOptimizerSparse(learning_rate=0.01, target_sparsity=0.5,
                                                                      sparse_step=0)), batches(3))
    assert abs(total - 0.5) < 1e-6
    print("pruning and resume ok")


def check_mirrored():
    """Two logical CPU devices under tf.distribute.MirroredStrategy."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    g = v1.Graph()
    with g.as_default():
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            k = v1.get_variable("dense/kernel", initializer=v1.glorot_uniform_initializer(seed=3)((16, 4)))
            step = v1.train.get_or_create_global_step()
            opt = pruning.MomentumOptimizerSparse(0.05, 0.9, target_sparsity=0.75, sparse_step=0)

        def replica_step(x):
            loss = tf.reduce_mean(tf.square(tf.matmul(x, k)))
            return opt.minimize(loss, global_step=step)
        data = tf.constant(np.random.default_rng(0).random((4, 16)).astype("float32"))
        train = strategy.experimental_local_results(strategy.run(replica_step, args=(data,)))
        with v1.Session(graph=g) as s:
            s.run(v1.global_variables_initializer())
            for _ in range(3):
                s.run(train)
            copies = s.run(list(strategy.experimental_local_results(k)))
    assert len(copies) == 2 and np.array_equal(copies[0], copies[1]), "the replicas disagree"
    assert abs(float((copies[0] == 0).mean()) - 0.75) < 1e-6
    print("mirrored ok")


def masks(out):
    result = {}
    for pattern in PATTERNS + ["global"]:
        w = weights()
        init = {"conv": np.transpose(w["conv"], (2, 3, 1, 0)), "dense": None}
        g = v1.Graph()
        with g.as_default():
            k = v1.get_variable("conv2d/kernel", initializer=init["conv"])
            d = v1.get_variable("dense/kernel", initializer=w["dense"].T)
            loss = tf.reduce_sum(k) * 0 + tf.reduce_sum(d) * 0
            opt = pruning.MomentumOptimizerSparse(0.0, 0.9, target_sparsity=0.6 if pattern == "global" else
                                                  target(pattern), pattern=pattern)
            train = opt.minimize(loss)
            with v1.Session(graph=g) as s:
                s.run(v1.global_variables_initializer())
                s.run(train)
                mk, md = s.run(opt._masks)
                assert mk.dtype == md.dtype == np.uint8, "masks take one byte per parameter"
        result[f"{pattern}/conv"] = np.transpose(mk, (3, 2, 0, 1)) > 0
        result[f"{pattern}/dense"] = md.T > 0
    expected = reference_global_masks([w["conv"], w["dense"]], 0.6)
    assert np.array_equal(result.pop("global/conv"), expected[0]), "global: conv differs from the reference"
    assert np.array_equal(result.pop("global/dense"), expected[1]), "global: dense differs from the reference"
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":  # needs a process whose TF runtime is not initialised yet
        check_mirrored()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            check_table()
            check_pruning_and_resume(tmp)
            check_restore_nonzero_step()
            check_two_optimizers()
            check_l1()
            check_clipping()
            check_loss_scaling()
            masks(sys.argv[1])
