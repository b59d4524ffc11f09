"""Keras 3 checks, run in a fresh process per backend: python keras_check.py OUT.npz (KERAS_BACKEND set).

Prints one "<check> ok" line per check that passed; tests/test_frameworks.py asserts on them. TABLE
(every optimizer, with Keras's own options) drives the target-0 bit-identity and the pruning invariants;
the other checks are the edges of issue 16 (XLA, EMA, one kernel, names across save/load, clipping,
accumulation, restore at a non-zero step, L1, two optimizers, mixed precision, Global).
"""

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import keras  # noqa: E402
from common import PATTERNS, target, weights  # noqa: E402

import prunekit.keras as pruning  # noqa: E402
from prunekit.core.masks import reference_global_masks, reference_mask  # noqa: E402
from prunekit.errors import PruningRuntimeError  # noqa: E402
from prunekit.keras.optimizers import canonical_perm  # noqa: E402

BACKEND = keras.backend.backend()
TF = BACKEND == "tensorflow"

# every optimizer, each row with some of Keras's own options (rows: label, base class, sparse class, kwargs)
SGD, ADAM = keras.optimizers.SGD, keras.optimizers.Adam
TABLE = [
    ("sgd-momentum", SGD, pruning.SGDSparse, dict(learning_rate=0.05, momentum=0.9)),
    ("sgd-nesterov-clipnorm", SGD, pruning.SGDSparse, dict(learning_rate=0.05, momentum=0.5, nesterov=True,
                                                            clipnorm=0.05)),
    ("sgd-ema-accumulation", SGD, pruning.SGDSparse, dict(learning_rate=0.05, momentum=0.9, use_ema=True,
                                                           ema_momentum=0.5, gradient_accumulation_steps=2)),
    ("adam-amsgrad-global_clipnorm", ADAM, pruning.AdamSparse, dict(learning_rate=0.01, amsgrad=True,
                                                                     global_clipnorm=0.05)),
    ("adam-wd-accumulation", ADAM, pruning.AdamSparse, dict(learning_rate=0.01, weight_decay=0.01,
                                                             gradient_accumulation_steps=2)),
]
PRUNE = dict(target_sparsity=0.75, pretrain_step=1, sparse_step=4, frequency=1, pattern="bank4")


def model(seed=0, name="net"):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6, 6, 4)), keras.layers.Conv2D(8, 3, name="conv"), keras.layers.Flatten(),
              keras.layers.Dense(16, activation="relu", name="hidden"), keras.layers.Dense(6, name="out")]
    return keras.Sequential(layers, name=name)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 4)).astype("float32"), rng.integers(0, 6, n)


def fit(m, opt, steps, seed=0, jit_compile="auto", eager=False):
    """``model.fit`` for ``steps`` batches of 8; ``eager`` skips tracing (seconds per fit on a small CPU)."""
    m.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile=jit_compile if TF and not eager else False, run_eagerly=eager)
    x, y = data(64, seed)
    m.fit(x[:8 * steps], y[:8 * steps], batch_size=8, epochs=1, shuffle=False, verbose=0)
    return m


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def kernel_sparsity(m):
    ws = [numpy(v) for v in m.trainable_variables if "kernel" in v.path]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def inner(opt):
    return getattr(opt, "inner_optimizer", opt)


def assert_state_masked(opt):
    """Pruned entries: weight 0, every slot (momenta, moments, EMA averages, accumulators) 0."""
    for (spec, v), m in zip(opt._pruned, opt._masks):
        pruned = numpy(m) == 0
        assert (numpy(v)[pruned] == 0).all(), spec
        index = opt._get_variable_index(v)
        for slot_list in opt._prune_slots + ("_accumulated_gradients", "_model_variables_moving_average"):
            slots = getattr(opt, slot_list, None)
            if slots and slots[index] is not None:
                assert (numpy(slots[index])[pruned] == 0).all(), f"{slot_list} of {spec} revived"


def check_table():
    """Target 0 = base optimizer, bit for bit, and the pruning invariants, for every row of TABLE."""
    for i, (label, base, sparse, kw) in enumerate(TABLE):
        eager = i > 0  # the first row traced (as fit runs by default), the others eager: tracing is the cost
        a = fit(model(), base(**kw), 4, eager=eager)
        b = fit(model(), sparse(target_sparsity=0.0, **kw), 4, eager=eager)
        assert same_weights(a, b), f"target 0 differs from {label}"
        accumulating = "gradient_accumulation_steps" in kw  # 8 batches = 4 real updates: events at 1, 2, 3
        opt = sparse(**kw, **dict(PRUNE, **({"sparse_step": 2} if accumulating else {})))
        m = fit(model(), opt, 8, eager=eager)
        assert abs(kernel_sparsity(m) - 0.75) < 1e-6, (label, kernel_sparsity(m))
        assert_state_masked(opt)
    print(f"table ok ({len(TABLE)} rows)")


def check_resume(tmp):
    for label, _, sparse, kw in TABLE[3:4]:
        straight = fit(model(), sparse(**kw, **PRUNE), 8)
        first = fit(model(), sparse(**kw, **PRUNE), 4)
        path = os.path.join(tmp, "m.keras")
        first.save(path)
        again = keras.models.load_model(path)
        assert int(again.optimizer.iterations) == 4
        x, y = data(64, 0)
        again.fit(x[32:], y[32:], batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert same_weights(again, straight), f"{label}: save/load in the middle changed the result"
    print("pruning and resume ok")


def check_names_across_save_load(tmp):
    """special_sparsity_dict names the variables as the optimizer saw them; load_model renames them."""
    kw = dict(learning_rate=0.05, target_sparsity=0.5, special_sparsity_dict={"net.hidden.kernel": 0.75})
    m = fit(model(), pruning.SGDSparse(**kw), 2)
    path = os.path.join(tmp, "names.keras")
    m.save(path)
    again = keras.models.load_model(path)
    x, y = data(16, 1)
    again.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    per, _ = again.optimizer.sparsity()
    assert abs(per["net.hidden.kernel"] - 0.75) < 1e-6 and abs(per["net.conv.kernel"] - 0.5) < 1e-6, per
    print("names across save/load ok")


def check_errors():
    try:
        pruning.SGDSparse(learning_rate=0.1, target_sparsity=1.5)
    except ValueError as e:
        assert "target_sparsity must be in [0, 1); got 1.5" in str(e)
    else:
        raise AssertionError("no error for target_sparsity=1.5")
    for method in ("feedback", "sr-ste"):  # the regrowing methods are PyTorch's only: a clear refusal
        try:
            pruning.SGDSparse(learning_rate=0.1, target_sparsity=0.5, method=method)
        except ValueError as e:
            assert f"method={method!r} is implemented for PyTorch only" in str(e) and "prunekit.keras supports" in str(e), e
        else:
            raise AssertionError(f"no error for method={method!r}")
    m = model()
    opt = pruning.AdamSparse(target_sparsity=0.5, special_sparsity_dict={"conv_kernel": 0.5})
    try:
        opt.build(m.trainable_variables)
    except ValueError as e:
        assert "did you mean" in str(e), e
    else:
        raise AssertionError("no error for an unknown name")
    m = model(name="nan")
    opt = pruning.SGDSparse(learning_rate=0.0, target_sparsity=0.5)
    kernel = m.get_layer("hidden").kernel
    kernel.assign(np.where(np.eye(*kernel.shape) > 0, np.nan, numpy(kernel)))
    try:
        opt.apply([keras.ops.zeros(v.shape) for v in m.trainable_variables], m.trainable_variables)
    except PruningRuntimeError as e:
        assert "'nan.hidden.kernel' holds NaN or inf at step 0" in str(e), e
    else:
        raise AssertionError("no error for NaN weights at an event")
    print("errors ok")


def check_ema():
    """use_ema: fit ends by copying the moving averages into the kernels; they must be sparse too."""
    opt = pruning.SGDSparse(learning_rate=0.05, momentum=0.9, use_ema=True, ema_momentum=0.9, target_sparsity=0.8,
                            pretrain_step=2, sparse_step=2, frequency=1)
    m = fit(model(), opt, 8)
    assert abs(kernel_sparsity(m) - 0.8) < 2e-3, kernel_sparsity(m)
    print("ema ok")


def grads_of(m, x, y):
    """Gradients of a plain loss for a custom loop (eager)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if TF:
        import tensorflow as tf
        with tf.GradientTape() as tape:
            loss = loss_fn(y, m(x))
        return tape.gradient(loss, m.trainable_variables)
    import torch
    m.zero_grad()
    loss = loss_fn(torch.as_tensor(y), m(torch.as_tensor(x)))
    loss.backward()
    return [v.value.grad.clone() for v in m.trainable_variables]


def check_one_kernel_eager():
    """A model with exactly one prunable kernel, stepped eagerly with optimizer.apply."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(6, name="only")], name="one")
    w = weights()["dense"]
    m.get_layer("only").kernel.assign(w.T)
    opt = pruning.SGDSparse(learning_rate=0.0, target_sparsity=0.6)
    x, y = np.ones((4, 16), "float32"), np.zeros(4, "int64")
    opt.apply(grads_of(m, x, y), m.trainable_variables)
    mask = numpy(opt._masks[0]).T > 0
    assert np.array_equal(mask, reference_mask(w, 0.6, pruning.Unstructured())), "one kernel: wrong mask"
    print("one kernel eager ok")


def dense_model(w):
    """Two bias-free Dense kernels: ``w`` (canonical (6, 16)) and a fixed (4, 6) one."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(6, name="d", use_bias=False),
                          keras.layers.Dense(4, name="e", use_bias=False)], name="clip")
    m.get_layer("d").kernel.assign(w.T)
    m.get_layer("e").kernel.assign(np.random.default_rng(9).integers(-3, 4, (4, 6)).astype("float32").T)
    return m


def check_clipping_and_moments():
    """Clipping sees only kept entries (by hand, per tensor and global); Adam moments of pruned entries stay 0."""
    rng = np.random.default_rng(3)
    w = weights()["dense"]
    x, y = rng.random((8, 16)).astype("float32"), rng.integers(0, 4, 8)
    for clip in (dict(clipnorm=0.01), dict(global_clipnorm=0.01)):
        m = dense_model(w)
        w0 = [numpy(v).T for v in m.trainable_variables]  # canonical (out, in)
        opt = pruning.SGDSparse(learning_rate=1.0, target_sparsity=0.9, **clip)
        g = [numpy(t).T for t in grads_of(m, x, y)]
        opt.apply([keras.ops.convert_to_tensor(t.T) for t in g], m.trainable_variables)
        masks = [reference_mask(t, 0.9, pruning.Unstructured()) for t in w0]
        kept = [t * mk for t, mk in zip(g, masks)]
        if "clipnorm" in clip:
            scales = [min(1.0, 0.01 / np.linalg.norm(k)) for k in kept]
        else:
            scales = [min(1.0, 0.01 / np.sqrt(sum(np.sum(k.astype(np.float64) ** 2) for k in kept)))] * 2
        for v, t, mk, k, scale in zip(m.trainable_variables, w0, masks, kept, scales):
            expected = t * mk - k * np.float32(scale)
            assert np.allclose(numpy(v).T, expected, rtol=1e-5, atol=1e-7), f"{clip}: clipping saw pruned gradients"
    m = dense_model(w)
    opt = pruning.AdamSparse(learning_rate=0.01, target_sparsity=0.75, pretrain_step=0, sparse_step=3, frequency=3)
    for _ in range(3):
        opt.apply(grads_of(m, x, y), m.trainable_variables)
        assert_state_masked(opt)
    print("clipping and moments ok")


def check_accumulation_events():
    """gradient_accumulation_steps=4: one event per scheduled step (eager: count the event calls)."""
    m = model(name="acc")
    opt = pruning.SGDSparse(learning_rate=0.05, momentum=0.9, gradient_accumulation_steps=4, target_sparsity=0.75,
                            pretrain_step=1, sparse_step=2, frequency=1)
    calls = []
    original = type(opt)._event
    opt._event = lambda: (calls.append(int(opt.iterations)), original(opt))
    x, y = data(8 * 16, 2)
    for i in range(16):
        opt.apply(grads_of(m, x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]), m.trainable_variables)
        assert_state_masked(opt)
    assert calls == [1, 2, 3], f"events ran at {calls}, expected once at steps 1, 2, 3"
    assert abs(kernel_sparsity(m) - 0.75) < 1e-6
    print("accumulation events ok")


def check_restore_nonzero_step():
    """restore_sparsity + fix_sparsity on a model whose step counter was restored at 1000."""
    for sparse in (pruning.SGDSparse, pruning.AdamSparse):
        m = model(name="restored")
        for v in m.trainable_variables:
            if "kernel" in v.path:
                w = numpy(v)
                v.assign(np.where(np.abs(w) < np.quantile(np.abs(w), 0.6), 0, w))
        before = kernel_sparsity(m)
        opt = sparse(learning_rate=0.01, restore_sparsity=True, fix_sparsity=True)
        opt.build(m.trainable_variables)
        opt.iterations.assign(1000)
        fit(m, opt, 3, eager=sparse is pruning.AdamSparse)
        assert abs(kernel_sparsity(m) - before) < 1e-6 and before > 0.55, (before, kernel_sparsity(m))
    print("restore at a restored step ok")


def check_l1():
    """L1: w <- w - lr * (g + l1 * sign(w)) on prunable kernels, by hand; biases get no L1 term."""
    rng = np.random.default_rng(4)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(6, name="d"), keras.layers.Dense(4, name="e")],
                         name="l1")
    x, y = rng.random((8, 16)).astype("float32"), rng.integers(0, 4, 8)
    w0 = [numpy(v) for v in m.trainable_variables]
    g = [numpy(t) for t in grads_of(m, x, y)]
    opt = pruning.SGDSparse(learning_rate=0.1, L1_regularization=True, l1_strength=0.5)
    opt.apply([keras.ops.convert_to_tensor(t) for t in g], m.trainable_variables)
    lr, l1 = np.float32(0.1), np.float32(0.5)
    for v, w, grad in zip(m.trainable_variables, w0, g):
        expected = w - lr * (grad + l1 * np.sign(w)) if "kernel" in v.path else w - lr * grad
        assert np.allclose(numpy(v), expected, rtol=1e-6, atol=1e-7), f"{v.path}: L1 differs from the hand computation"
    print("l1 ok")


def check_two_optimizers():
    """Two pruning optimizers in one custom loop (a generator and a discriminator): each follows its own plan."""
    def sub(name, n_in):
        keras.utils.set_random_seed(len(name))
        layers = [keras.Input((n_in,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(4, name="b")]
        return keras.Sequential(layers, name=name)

    def run(which):
        nets = {"gen": sub("gen", 8), "disc": sub("disc", 4)}
        opts = {"gen": pruning.AdamSparse(learning_rate=0.01, target_sparsity=0.5, pretrain_step=1, sparse_step=2,
                                          frequency=1),
                "disc": pruning.SGDSparse(learning_rate=0.05, momentum=0.9, target_sparsity=0.75, pretrain_step=2)}
        rngs = {name: np.random.default_rng(len(name)) for name in which}
        for _ in range(4):
            for name in which:
                rng = rngs[name]
                x, y = rng.random((8, nets[name].input_shape[-1])).astype("float32"), rng.integers(0, 4, 8)
                opts[name].apply(grads_of(nets[name], x, y), nets[name].trainable_variables)
        return {k: [numpy(v) for v in nets[k].trainable_variables] for k in which}, opts

    both, opts = run(["gen", "disc"])
    assert abs(opts["gen"].sparsity()[1] - 0.5) < 1e-6 and abs(opts["disc"].sparsity()[1] - 0.75) < 1e-6
    alone = {**run(["gen"])[0], **run(["disc"])[0]}
    for k in both:
        assert all(np.array_equal(p, q) for p, q in zip(both[k], alone[k])), f"{k} differs beside the other"
    print("two optimizers ok")


def check_mixed_precision():
    """mixed_float16: compile wraps the optimizer in a LossScaleOptimizer; target 0 is the base, bit for bit."""
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        a = fit(model(), keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), 4)
        b = fit(model(), pruning.SGDSparse(learning_rate=0.05, momentum=0.9, target_sparsity=0.0), 4)
        assert same_weights(a, b), "mixed_float16: target 0 differs from SGD"
        m = fit(model(), pruning.AdamSparse(learning_rate=0.01, **PRUNE), 8)
        assert type(m.optimizer).__name__ == "LossScaleOptimizer"
        assert abs(kernel_sparsity(m) - 0.75) < 1e-6
        assert_state_masked(inner(m.optimizer))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    print("mixed precision ok")


def check_xla():
    """fit(jit_compile=True): the event runs inside the XLA step (TensorFlow backend)."""
    for sparse, kw in ((pruning.SGDSparse, dict(learning_rate=0.05, momentum=0.9)),
                       (pruning.AdamSparse, dict(learning_rate=0.01))):
        for pattern in (("bank4",) if sparse is pruning.SGDSparse else ("global",)):
            m = fit(model(), sparse(**kw, **dict(PRUNE, pattern=pattern)), 8, jit_compile=True)
            assert abs(kernel_sparsity(m) - 0.75) < 1e-6, (pattern, kernel_sparsity(m))
            assert_state_masked(m.optimizer)
    print("xla ok")


def masks(out):
    """Masks after one event on given integer weights (learning rate 0 keeps the weights).

    TensorFlow: the event runs inside ``tf.function(jit_compile=True)``, so these are XLA's masks."""
    result = {}
    for pattern in PATTERNS + ["global"]:
        m = model()
        w = weights()
        conv = m.get_layer("conv")
        conv.kernel.assign(np.transpose(w["conv"], (2, 3, 1, 0)))  # canonical -> (kh, kw, in, out)
        hidden = keras.layers.Dense(6, name="d")
        hidden.build((None, 16))
        hidden.kernel.assign(w["dense"].T)
        opt = pruning.SGDSparse(learning_rate=0.0, target_sparsity=0.6 if pattern == "global" else target(pattern),
                                pattern=pattern)
        variables = [conv.kernel, hidden.kernel]
        zeros = [keras.ops.zeros(v.shape, "float32") for v in variables]
        opt.build(variables)
        if TF:
            import tensorflow as tf
            tf.function(lambda: opt.apply(zeros, variables), jit_compile=True)()
        else:
            opt.apply(zeros, variables)
        for (spec, v), mv in zip(opt._pruned, opt._masks):
            assert numpy(mv).dtype == np.uint8, "masks take one byte per parameter"
            key = "conv" if "conv" in spec.name else "dense"
            result[f"{pattern}/{key}"] = np.transpose(numpy(mv), canonical_perm(len(v.shape))) > 0
    expected = reference_global_masks([w["conv"], w["dense"]], 0.6)
    assert np.array_equal(result["global/conv"], expected[0]) and np.array_equal(result["global/dense"], expected[1])
    del result["global/conv"], result["global/dense"]
    np.savez(out, **result)
    print("masks written")


if __name__ == "__main__":
    only = sys.argv[2:]  # names of checks to run (default: all)
    with tempfile.TemporaryDirectory() as tmp:
        checks = {"table": check_table, "resume": lambda: check_resume(tmp), "errors": check_errors,
                  "names": lambda: check_names_across_save_load(tmp), "ema": check_ema,
                  "one_kernel": check_one_kernel_eager, "clipping": check_clipping_and_moments,
                  "accumulation": check_accumulation_events, "restore": check_restore_nonzero_step, "l1": check_l1,
                  "two": check_two_optimizers, "mixed": check_mixed_precision, "xla": check_xla,
                  "masks": lambda: masks(sys.argv[1])}
        if not TF:  # XLA is TensorFlow's; the rest of these is backend-neutral code, checked on TensorFlow
            for name in ("xla", "mixed", "ema", "accumulation", "two", "names"):
                del checks[name]
        for name, check in checks.items():
            if not only or name in only:
                check()
