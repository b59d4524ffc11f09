"""MXNet Gluon checks, run with the MXNet virtual environment's python: python mxnet_check.py OUT.npz"""

import os
import sys
import tempfile

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

sys.path.insert(0, os.path.dirname(__file__))
from common import PATTERNS, target, weights  # noqa: E402

import prunekit.mxnet as pruning  # noqa: E402


def net(seed=0):
    mx.random.seed(seed)
    n = gluon.nn.HybridSequential()
    n.add(gluon.nn.Conv2D(8, 3, in_channels=4, activation="relu"), gluon.nn.Flatten(), gluon.nn.Dense(6, in_units=128))
    n.initialize(mx.init.Xavier(rnd_type="uniform"))
    return n


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(nd.array(rng.random((8, 4, 6, 6))), nd.array(rng.integers(0, 6, 8))) for _ in range(n)]


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
        result[f"{pattern}/conv"] = states[0][0].asnumpy() > 0
        result[f"{pattern}/dense"] = states[1][0].asnumpy() > 0
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        check_equivalence()
        check_pruning_and_resume(tmp)
        masks(sys.argv[1])
