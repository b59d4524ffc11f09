"""MXNet Gluon checks, run with the MXNet virtual environment's python: python mxnet_check.py OUT.npz

Prints one "<check> ok" line per check; tests/test_frameworks.py asserts on them. TABLE holds every
optimizer with its options, in float32 and (multi_precision) float16: target 0 must be the base
optimizer bit for bit, and a pruned run must hit its target with every array of a pruned entry's
state (momentum, moments, master copy) at 0.
"""

import os
import sys
import tempfile

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

sys.path.insert(0, os.path.dirname(__file__))
from common import PATTERNS, target, weights  # noqa: E402

import prunekit.mxnet as pruning  # noqa: E402


TABLE = [
    ("nag", dict(learning_rate=0.05, momentum=0.9, wd=1e-3)),
    ("nadam", dict(learning_rate=0.01)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9)),
    ("sgd", dict(learning_rate=0.05, momentum=0.0, wd=1e-3, clip_gradient=0.05)),
]
PRUNE = dict(target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1, pattern="bank4")


def net(seed=0, dtype="float32"):
    mx.random.seed(seed)
    n = gluon.nn.HybridSequential()
    n.add(gluon.nn.Conv2D(8, 3, in_channels=4, activation="relu"), gluon.nn.Flatten(), gluon.nn.Dense(6, in_units=128))
    n.initialize(mx.init.Xavier(rnd_type="uniform"))
    if dtype != "float32":
        n.cast(dtype)
    return n


def batches(n, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [(nd.array(rng.random((8, 4, 6, 6)), dtype=dtype), nd.array(rng.integers(0, 6, 8), dtype=dtype))
            for _ in range(n)]


def arrays(state):
    if isinstance(state, (list, tuple)):
        return [a for s in state for a in arrays(s)]
    return [state] if isinstance(state, mx.nd.NDArray) else []


def assert_state_masked(trainer, n):
    params = trainer._params
    for index, state in trainer._updaters[0].states.items():
        if isinstance(state, list) and len(state) == 3 and isinstance(state[1], dict):
            pruned = state[0].asnumpy() == 0
            assert (params[index].data().asnumpy()[pruned] == 0).all()
            for a in arrays(state[2]):
                if a.shape == pruned.shape:
                    assert (a.asnumpy()[pruned] == 0).all(), f"state of {state[1]['name']} revived"


def train_fp16(n, trainer, steps, seed=0):
    """float16 steps with given gradients: MXNet has no float16 matrix product on CPU, so no forward pass."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in n.collect_params().values():
            p.grad()[:] = nd.array(rng.standard_normal(p.shape) * 0.5, dtype="float16")
            p.data()._fresh_grad = True  # what Trainer checks, as backward() would set it
        trainer.step(8)
    return [p.data().asnumpy() for p in n.collect_params().values()]


def check_table():
    for dtype in ("float32", "float16"):
        for base, kw in TABLE:
            kw = dict(kw, multi_precision=dtype == "float16")
            fit = (lambda n, t, k: train(n, t, batches(k))) if dtype == "float32" else train_fp16
            na, nb = net(dtype=dtype), net(dtype=dtype)
            a = fit(na, gluon.Trainer(na.collect_params(), base, dict(kw)), 5)
            b = fit(nb, gluon.Trainer(nb.collect_params(), base + "sparse", dict(kw, target_sparsity=0.0)), 5)
            assert all(np.array_equal(p, q) for p, q in zip(a, b)), f"target 0 differs from {base} {kw}"
            n = net(dtype=dtype)
            t = gluon.Trainer(n.collect_params(), base + "sparse", dict(kw, **PRUNE))
            fit(n, t, 8)
            assert abs(t._optimizer.sparsity()[1] - 0.75) < 1e-6, (base, kw, t._optimizer.sparsity())
            assert_state_masked(t, n)
    for method in ("feedback", "sr-ste"):  # the regrowing methods are PyTorch's only: a clear refusal
        try:
            pruning.SGDSparse(learning_rate=0.1, target_sparsity=0.5, method=method)
        except ValueError as e:
            assert f"method={method!r} is implemented for PyTorch only" in str(e) and "prunekit.mxnet supports" in str(e), e
        else:
            raise AssertionError(f"no error for method={method!r}")
    print("equivalence ok")
    print(f"table ok ({2 * len(TABLE)} rows)")


def check_restore_nonzero_step():
    """restore_sparsity + fix_sparsity, resuming at update count 1000 (begin_num_update): zeros kept."""
    for base in ("nag", "nadam", "sgd"):
        n = net()
        for p in n.collect_params().values():
            if p.name.endswith("weight"):
                w = p.data().asnumpy()
                p.set_data(nd.array(np.where(np.abs(w) < np.quantile(np.abs(w), 0.6), 0, w)))
        t = gluon.Trainer(n.collect_params(), base + "sparse", dict(learning_rate=0.01, restore_sparsity=True,
                                                                    fix_sparsity=True, begin_num_update=1000))
        train(n, t, batches(3))
        per, total = t._optimizer.sparsity()
        assert all(abs(v - 0.6) < 0.01 for v in per.values()), (base, per)
    print("restore at a restored step ok")


def check_l1():
    """L1 by hand: w <- w - lr * (rescale * g + l1 * sign(w)) on the weight; the bias gets no L1 term."""
    mx.random.seed(3)
    d = gluon.nn.Dense(6, in_units=16)
    d.initialize(mx.init.Xavier())
    w0, b0 = d.weight.data().asnumpy(), d.bias.data().asnumpy()
    t = gluon.Trainer(d.collect_params(), "sgdsparse", dict(learning_rate=0.1, L1_regularization=True,
                                                            l1_strength=0.5))
    x = nd.array(np.random.default_rng(3).random((4, 16)))
    with autograd.record():
        loss = (d(x) ** 2).sum()
    loss.backward()
    gw, gb = d.weight.grad().asnumpy().copy(), d.bias.grad().asnumpy().copy()
    t.step(4)
    expected_w = w0 - np.float32(0.1) * (gw / 4 + np.float32(0.5) * np.sign(w0))
    assert np.allclose(d.weight.data().asnumpy(), expected_w, rtol=1e-5, atol=1e-6), "L1 differs from the hand sum"
    assert np.allclose(d.bias.data().asnumpy(), b0 - np.float32(0.1) * gb / 4, rtol=1e-5, atol=1e-6)
    print("l1 ok")


def check_two_optimizers():
    """Two Trainers, two pruning optimizers on two networks, stepped in turn: each as if alone."""
    def run(which):
        out = {}
        nets = {k: net(seed=i) for i, k in enumerate(("a", "b"))}
        trainers = {"a": gluon.Trainer(nets["a"].collect_params(), "nadamsparse",
                                       dict(learning_rate=0.01, target_sparsity=0.5, pretrain_step=1)),
                    "b": gluon.Trainer(nets["b"].collect_params(), "nagsparse",
                                       dict(learning_rate=0.05, momentum=0.9, target_sparsity=0.75, sparse_step=2,
                                            frequency=1))}
        data = batches(4)
        for x, y in data:
            for k in which:
                train(nets[k], trainers[k], [(x, y)])
        for k in which:
            values = [p.data().asnumpy() for p in nets[k].collect_params().values()]
            out[k] = (values, trainers[k]._optimizer.sparsity())
        return out

    both, alone = run("ab"), {**run("a"), **run("b")}
    for k, target_ in (("a", 0.5), ("b", 0.75)):
        assert abs(both[k][1][1] - target_) < 1e-6, (k, both[k][1])
        assert all(np.array_equal(p, q) for p, q in zip(both[k][0], alone[k][0])), f"{k} differs beside the other"
    print("two optimizers ok")


def train(n, trainer, data):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in data:
        with autograd.record():
            loss = loss_fn(n(x), y)
        loss.backward()
        trainer.step(8)
    return [p.data().asnumpy() for p in n.collect_params().values()]


def check_equivalence():
    data = batches(5)
    for base, kw in [("nag", dict(learning_rate=0.05, momentum=0.9, wd=1e-3)),
                     ("nadam", dict(learning_rate=0.01)),
                     ("sgd", dict(learning_rate=0.05, momentum=0.9))]:
        na, nb = net(), net()
        a = train(na, gluon.Trainer(na.collect_params(), base, dict(kw)), data)
        b = train(nb, gluon.Trainer(nb.collect_params(), base + "sparse", dict(kw, target_sparsity=0.0)), data)
        assert all(np.array_equal(p, q) for p, q in zip(a, b)), f"target 0 differs from {base}"
    print("equivalence ok")


def check_pruning_and_resume(tmp):
    kw = dict(learning_rate=0.05, momentum=0.9, target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1,
              pattern="bank4")
    data = batches(8)
    ns = net()
    ts = gluon.Trainer(ns.collect_params(), pruning.NAGSparse(**kw))
    straight = train(ns, ts, data)
    per, total = ts._optimizer.sparsity()
    assert abs(total - 0.75) < 1e-6, per
    n1 = net()
    t1 = gluon.Trainer(n1.collect_params(), "nagsparse", dict(kw))
    train(n1, t1, data[:4])
    n1.save_parameters(os.path.join(tmp, "p.params"))
    t1.save_states(os.path.join(tmp, "t.states"))
    n2 = net(seed=7)
    n2.load_parameters(os.path.join(tmp, "p.params"))
    t2 = gluon.Trainer(n2.collect_params(), "nagsparse", dict(kw))
    t2.load_states(os.path.join(tmp, "t.states"))
    resumed = train(n2, t2, data[4:])
    assert all(np.array_equal(p, q) for p, q in zip(straight, resumed)), "save/load states changed the result"
    per2, total2 = t2._optimizer.sparsity()  # the rebuilt network's parameters have other names
    assert list(per2.values()) == list(per.values()) and total2 == total, (per2, per)
    nn_ = net()
    tn = gluon.Trainer(nn_.collect_params(), pruning.NadamSparse(learning_rate=0.01, target_sparsity=0.5))
    train(nn_, tn, batches(2))
    assert abs(tn._optimizer.sparsity()[1] - 0.5) < 1e-6
    try:
        pruning.SGDSparse(learning_rate=0.1, target_sparsity=1.5)
    except ValueError as e:
        assert "got 1.5" in str(e)
    else:
        raise AssertionError("no error for target_sparsity=1.5")
    print("pruning and resume ok")


def masks(out):
    result = {}
    for pattern in PATTERNS:
        w = weights()
        n = net()
        params = list(n.collect_params().values())
        params[0].set_data(nd.array(w["conv"]))
        dense = gluon.nn.Dense(6, in_units=16)
        dense.initialize()
        dense.weight.set_data(nd.array(w["dense"]))
        opt = pruning.SGDSparse(learning_rate=0.0, target_sparsity=target(pattern), pattern=pattern)
        trainer = gluon.Trainer([params[0], dense.weight], opt)
        with autograd.record():  # fresh zero gradients, so the step is not skipped as stale
            loss = (params[0].data() * 0).sum() + (dense.weight.data() * 0).sum()
        loss.backward()
        trainer.step(1)
        states = trainer._updaters[0].states
        assert states[0][0].dtype == np.uint8, "masks take one byte per parameter"
        result[f"{pattern}/conv"] = states[0][0].asnumpy() > 0
        result[f"{pattern}/dense"] = states[1][0].asnumpy() > 0
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        check_table()
        check_pruning_and_resume(tmp)
        check_restore_nonzero_step()
        check_l1()
        check_two_optimizers()
        masks(sys.argv[1])
