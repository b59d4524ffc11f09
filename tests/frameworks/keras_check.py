"""Keras 3 checks, run in a fresh process per backend: python keras_check.py OUT.npz (KERAS_BACKEND set)."""

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import keras  # noqa: E402
from common import PATTERNS, weights, target  # noqa: E402

import prunekit.keras as pruning  # noqa: E402
from prunekit.keras.optimizers import canonical_perm  # noqa: E402


def model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(8, 3, name="conv"), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu", name="hidden"), keras.layers.Dense(6, name="out")])


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 4)).astype("float32"), rng.integers(0, 6, n)


def fit(m, opt, steps, seed=0):
    m.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data(64, seed)
    m.fit(x[:8 * steps], y[:8 * steps], batch_size=8, epochs=1, shuffle=False, verbose=0)
    return m


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def check_equivalence():
    for base, sparse, kw in [(keras.optimizers.SGD, pruning.SGDSparse, dict(learning_rate=0.05, momentum=0.9)),
                             (keras.optimizers.SGD, pruning.SGDSparse, dict(learning_rate=0.05, nesterov=True, momentum=0.5)),
                             (keras.optimizers.Adam, pruning.AdamSparse, dict(learning_rate=0.01, amsgrad=True))]:
        a = fit(model(), base(**kw), 4)
        b = fit(model(), sparse(target_sparsity=0.0, **kw), 4)
        assert same_weights(a, b), f"target 0 differs from {base.__name__} {kw}"
    print("equivalence ok")


def check_pruning_and_resume(tmp):
    kw = dict(learning_rate=0.05, momentum=0.9, target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1,
              pattern="bank4")
    straight = fit(model(), pruning.SGDSparse(**kw), 8)
    opt = straight.optimizer
    per, total = opt.sparsity()
    assert abs(total - 0.75) < 1e-6, per
    # stop after 4 steps, save, load, go on for 4 more: same weights as the straight run
    first = fit(model(), pruning.SGDSparse(**kw), 4)
    path = os.path.join(tmp, "m.keras")
    first.save(path)
    again = keras.models.load_model(path)
    assert int(again.optimizer.iterations) == 4
    x, y = data(64, 0)
    again.fit(x[32:], y[32:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert same_weights(again, straight), "save/load in the middle changed the result"
    print("pruning and resume ok")


def check_errors():
    try:
        pruning.SGDSparse(learning_rate=0.1, target_sparsity=1.5)
    except ValueError as e:
        assert "target_sparsity must be in [0, 1); got 1.5" in str(e)
    else:
        raise AssertionError("no error for target_sparsity=1.5")
    m = model()
    opt = pruning.AdamSparse(target_sparsity=0.5, special_sparsity_dict={"conv_kernel": 0.5})
    try:
        opt.build(m.trainable_variables)
    except ValueError as e:
        assert "did you mean" in str(e), e
    else:
        raise AssertionError("no error for an unknown name")
    print("errors ok")


def masks(out):
    """Masks after one event on given integer weights (learning rate 0 keeps the weights)."""
    result = {}
    for pattern in PATTERNS:
        m = model()
        w = weights()
        conv = m.get_layer("conv")
        conv.kernel.assign(np.transpose(w["conv"], (2, 3, 1, 0)))  # canonical -> (kh, kw, in, out)
        hidden = keras.layers.Dense(6, name="d")
        hidden.build((None, 16))
        hidden.kernel.assign(w["dense"].T)
        opt = pruning.SGDSparse(learning_rate=0.0, target_sparsity=target(pattern), pattern=pattern)
        variables = [conv.kernel, hidden.kernel]
        opt.apply([keras.ops.zeros(v.shape, "float32") for v in variables], variables)
        for (spec, v), mv in zip(opt._pruned, opt._masks):
            key = "conv" if "conv" in spec.name else "dense"
            result[f"{pattern}/{key}"] = np.transpose(keras.ops.convert_to_numpy(mv), canonical_perm(len(v.shape))) > 0
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        check_equivalence()
        check_pruning_and_resume(tmp)
        check_errors()
        masks(sys.argv[1])
