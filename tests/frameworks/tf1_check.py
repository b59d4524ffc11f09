"""TF1 (graph mode) checks, run in a fresh process: python tf1_check.py OUT.npz | mirrored"""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from common import PATTERNS, target, weights  # noqa: E402

import prunekit.tf1 as pruning  # noqa: E402

v1 = tf.compat.v1
v1.disable_eager_execution()


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


def check_equivalence():
    data = batches(5)
    for base, sparse, kw in [(v1.train.MomentumOptimizer, pruning.MomentumOptimizerSparse,
                              dict(learning_rate=0.05, momentum=0.9)),
                             (v1.train.MomentumOptimizer, pruning.MomentumOptimizerSparse,
                              dict(learning_rate=0.05, momentum=0.9, use_nesterov=True)),
                             (v1.train.AdamOptimizer, pruning.AdamOptimizerSparse, dict(learning_rate=0.01))]:
        a, _ = run(build(lambda: base(**kw)), data)
        b, _ = run(build(lambda: sparse(target_sparsity=0.0, **kw)), data)
        assert all(np.array_equal(p, q) for p, q in zip(a, b)), f"target 0 differs from {base.__name__}"
    print("equivalence ok")


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
    for pattern in PATTERNS:
        w = weights()
        init = {"conv": np.transpose(w["conv"], (2, 3, 1, 0)), "dense": None}
        g = v1.Graph()
        with g.as_default():
            k = v1.get_variable("conv2d/kernel", initializer=init["conv"])
            d = v1.get_variable("dense/kernel", initializer=w["dense"].T)
            loss = tf.reduce_sum(k) * 0 + tf.reduce_sum(d) * 0
            opt = pruning.MomentumOptimizerSparse(0.0, 0.9, target_sparsity=target(pattern), pattern=pattern)
            train = opt.minimize(loss)
            with v1.Session(graph=g) as s:
                s.run(v1.global_variables_initializer())
                s.run(train)
                mk, md = s.run(opt._masks)
        result[f"{pattern}/conv"] = np.transpose(mk, (3, 2, 0, 1)) > 0
        result[f"{pattern}/dense"] = md.T > 0
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":  # needs a process whose TF runtime is not initialised yet
        check_mirrored()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            check_equivalence()
            check_pruning_and_resume(tmp)
            masks(sys.argv[1])
