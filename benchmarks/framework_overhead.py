"""Step and prune-event overhead of the Keras 3, TF1 and MXNet pruning optimizers against their base optimizers.

The same shapes in every framework: four dense layers of 1024x1024 (4.2M weights) with fixed random
gradients, SGD with momentum 0.9, target 0.9 unstructured. For each framework, side by side in one process:
the base optimizer's step, the pruning optimizer's step between events (pruned once at step 0), and one
whose every step is a prune event mid-ramp (frequency 1); "event" = that step minus the plain sparse step.
Medians over rounds of short blocks. Each framework runs in its own process (MXNet in .venv-mxnet).

    python benchmarks/framework_overhead.py [--rounds 8] [--json benchmarks/results/framework_overhead.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SHAPES = [(1024, 1024)] * 4
PRUNE_STEADY = dict(target_sparsity=0.9, pretrain_step=0, sparse_step=0)
PRUNE_RAMP = dict(target_sparsity=0.9, init_sparsity=0.5, pretrain_step=0, sparse_step=10_000, frequency=1,
                  exponent=1.0)


def _blocks(steps, rounds, block=5):
    """Median seconds per call of each ``steps[name]()``, timed in rounds of blocks side by side."""
    times = {k: [] for k in steps}
    for fn in steps.values():
        fn()
    for _ in range(rounds):
        for name, fn in steps.items():
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def keras_steps(rounds):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    import prunekit.keras as pruning

    def make(opt):
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.standard_normal(s).astype("float32") * 0.05, name=f"dense{i}_kernel")
                     for i, s in enumerate(SHAPES)]
        grads = [tf.constant(rng.standard_normal(s).astype("float32") * 1e-3) for s in SHAPES]
        opt.build(variables)
        fn = tf.function(lambda: opt.apply(grads, variables), jit_compile=False)
        return lambda: fn()

    return _blocks({"base": make(keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)),
                    "sparse": make(pruning.SGDSparse(learning_rate=0.01, momentum=0.9, **PRUNE_STEADY)),
                    "ramp": make(pruning.SGDSparse(learning_rate=0.01, momentum=0.9, **PRUNE_RAMP))}, rounds)


def tf1_steps(rounds):
    import numpy as np
    import tensorflow as tf

    import prunekit.tf1 as pruning
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    ops = {}
    rng = np.random.default_rng(0)
    for name, factory in (("base", lambda: tf1.train.MomentumOptimizer(0.01, 0.9)),
                          ("sparse", lambda: pruning.MomentumOptimizerSparse(0.01, 0.9, **PRUNE_STEADY)),
                          ("ramp", lambda: pruning.MomentumOptimizerSparse(0.01, 0.9, **PRUNE_RAMP))):
        with tf1.variable_scope(name):
            variables = [tf1.get_variable(f"kernel{i}", initializer=rng.standard_normal(s).astype("float32") * 0.05)
                         for i, s in enumerate(SHAPES)]
            grads = [tf.constant(rng.standard_normal(s).astype("float32") * 1e-3) for s in SHAPES]
            step = tf1.Variable(0, trainable=False, dtype=tf.int64, name="global_step")
            ops[name] = factory().apply_gradients(list(zip(grads, variables)), global_step=step)
    session = tf1.Session(config=tf1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1))
    session.run(tf1.global_variables_initializer())
    return _blocks({k: (lambda op=op: session.run(op)) for k, op in ops.items()}, rounds)


def mxnet_steps(rounds):
    import mxnet as mx
    import numpy as np
    from mxnet import gluon

    import prunekit.mxnet  # noqa: F401  (registers sgdsparse)

    def make(name, args):
        rng = np.random.default_rng(0)
        net = gluon.nn.HybridSequential()
        for _ in SHAPES:
            net.add(gluon.nn.Dense(1024, in_units=1024, use_bias=False))
        net.initialize(mx.init.Xavier())
        params = list(net.collect_params().values())
        trainer = gluon.Trainer(net.collect_params(), name, dict(learning_rate=0.01, momentum=0.9, **args))
        for p in params:
            p.grad()[:] = mx.nd.array(rng.standard_normal(p.shape) * 1e-3)

        def step():
            for p in params:  # the same fixed gradients every step: mark them as written by a backward pass
                for data in p.list_data():
                    data._fresh_grad = True
            trainer.step(1)
            mx.nd.waitall()
        return step

    return _blocks({"base": make("sgd", {}), "sparse": make("sgdsparse", PRUNE_STEADY),
                    "ramp": make("sgdsparse", PRUNE_RAMP)}, rounds)


FRAMEWORKS = {"keras": (keras_steps, sys.executable, "Keras 3 (TensorFlow) SGDSparse vs keras SGD"),
              "tf1": (tf1_steps, sys.executable, "TF1 MomentumOptimizerSparse vs MomentumOptimizer"),
              "mxnet": (mxnet_steps, os.path.join(ROOT, ".venv-mxnet", "bin", "python"), "MXNet sgdsparse vs sgd")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", default="benchmarks/results/framework_overhead.json")
    parser.add_argument("--one", choices=sorted(FRAMEWORKS), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(FRAMEWORKS[args.one][0](args.rounds)))
        return
    rows = []
    for name, (_, python, label) in FRAMEWORKS.items():
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="2")
        out = subprocess.run([python, __file__, "--one", name, "--rounds", str(args.rounds)], capture_output=True,
                             text=True, env=env, cwd=ROOT)
        if out.returncode != 0:
            rows.append({"framework": label, "error": out.stderr.strip().splitlines()[-1][:200]})
            continue
        t = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"framework": label, "base_step_ms": t["base"] * 1e3, "sparse_step_ms": t["sparse"] * 1e3,
                     "step_ratio": t["sparse"] / t["base"], "prune_event_ms": (t["ramp"] - t["sparse"]) * 1e3,
                     "event_ratio": (t["ramp"] - t["sparse"]) / t["base"],
                     "amortized_ratio_f100": (t["sparse"] + (t["ramp"] - t["sparse"]) / 100) / t["base"]})
    print("| framework | base step ms | sparse step ms | step ratio | prune event ms | event / base step | "
          "amortized (f=100) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['framework']} | failed: {r['error']} |||||| ")
            continue
        print(f"| {r['framework']} | {r['base_step_ms']:.1f} | {r['sparse_step_ms']:.1f} | {r['step_ratio']:.2f}x | "
              f"{r['prune_event_ms']:.0f} | {r['event_ratio']:.1f}x | {r['amortized_ratio_f100']:.2f}x |")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"shapes": SHAPES, "rounds": args.rounds, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
