"""Prune the seed's simple CNN with MXNet Gluon: the Trainer gets 'nagsparse' instead of 'nag'.

    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple.py --dataset fashion-mnist --epochs 12

MXNet 1.9.1 needs numpy<1.24, so it has its own environment: ``bash scripts/setup.sh`` creates
``.venv-mxnet`` with MXNet, prunekit (``pip install -e . --no-deps``) and scikit-learn (for ``--dataset
digits``). In an environment of your own: ``pip install "numpy<1.24" mxnet==1.9.1 scikit-learn`` and
``pip install -e . --no-deps`` from the repository root.

Smallest run (seconds, generated data; tests/test_examples.py runs exactly this):

    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple.py --dataset synthetic --epochs 1 --train-subset 500

Saves ``mx_pruned.params`` (weights) and ``mx_pruned.states`` (optimizer state: masks, update counts).
"""

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

import prunekit.mxnet  # noqa: F401  (registers nagsparse, nadamsparse, sgdsparse)
from np_common import batches, dataset, parser, schedule


def seed_cnn():
    net = gluon.nn.HybridSequential(prefix="")
    with net.name_scope():
        for i, channels in enumerate((64, 128, 256), 1):
            net.add(gluon.nn.Conv2D(channels, 3, strides=2, prefix=f"conv{i}_"), gluon.nn.BatchNorm(prefix=f"bn{i}_"),
                    gluon.nn.Activation("relu"))
        net.add(gluon.nn.Flatten(), gluon.nn.Dense(10, prefix="linear1_"))
    return net


def accuracy(net, x, y):
    hits = 0
    for i in range(0, len(x), 1000):
        hits += int((net(nd.array(x[i:i + 1000])).argmax(axis=1).asnumpy() == y[i:i + 1000]).sum())
    return hits / len(x)


def train(net, trainer, args, x_train, y_train, x_test, y_test, epochs):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    step = 0
    for epoch in range(epochs):
        for bx, by in batches(x_train, y_train, args.batch_size, epoch, args.seed):
            with autograd.record():
                loss = loss_fn(net(nd.array(bx)), nd.array(by))
            loss.backward()
            trainer.step(len(bx))
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        print(f"epoch {epoch + 1}: test accuracy {accuracy(net, x_test, y_test):.4f}, "
              f"sparsity {trainer._optimizer.sparsity()[1]:.4f}")
        if args.max_steps and step >= args.max_steps:
            break


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", default="mx_pruned")
    args = p.parse_args()
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    x_train, y_train, x_test, y_test = dataset(args)
    steps = len(x_train) // args.batch_size
    net = seed_cnn()
    net.initialize(mx.init.Xavier())
    lr = mx.lr_scheduler.CosineScheduler(max(1, args.epochs * steps), base_lr=args.lr)
    # trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": args.lr, "momentum": 0.9})
    trainer = gluon.Trainer(net.collect_params(), "nagsparse", {
        "learning_rate": args.lr, "momentum": 0.9, "lr_scheduler": lr, "target_sparsity": args.target_sparsity,
        "keywords_no_sparse": ["bias", "beta", "gamma", "conv1_"], **schedule(args, steps)})
    train(net, trainer, args, x_train, y_train, x_test, y_test, args.epochs)
    print(trainer._optimizer.plan)
    net.save_parameters(args.out + ".params")
    trainer.save_states(args.out + ".states")
    print(f"saved {args.out}.params and {args.out}.states")


if __name__ == "__main__":
    main()
