"""Arguments and numpy batches shared by the Keras, TensorFlow 1 and MXNet examples (numpy only)."""

import argparse

import numpy as np

from prunekit.data import load


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist", "digits", "synthetic"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target-sparsity", type=float, default=0.95)
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    return p


def dataset(args, size=28):
    """(x_train, y_train, x_test, y_test) as NCHW float32 in [0, 1], resized to ``size`` if needed."""
    data = load(args.dataset, root=args.data_root).subset(args.train_subset)
    xs = [data.x_train, data.x_test]
    if data.x_train.shape[-1] != size:  # the 8x8 digits: nearest-neighbour upscale to the CNN's input
        idx = (np.arange(size) * data.x_train.shape[-1] // size)
        xs = [x[:, :, idx][:, :, :, idx] for x in xs]
    return xs[0], data.y_train, xs[1], data.y_test


def batches(x, y, batch_size, epoch, seed):
    order = np.random.default_rng(seed * 1000 + epoch).permutation(len(x))
    for i in range(len(x) // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield x[idx], y[idx]


def schedule(args, steps_per_epoch, pretrain=True):
    """The seed's recipe in steps: a quarter dense, half ramp, a quarter fine-tune (of all steps, so that one
    epoch still trains before it prunes), prune events five times an epoch (at least every step).

    ``pretrain=False`` (the resume examples): the ramp starts at once, from the loaded model's sparsity.
    """
    total = max(1, args.epochs * steps_per_epoch)
    return dict(pretrain_step=max(1, total // 4) if pretrain else 0, sparse_step=max(1, total // 2),
                frequency=max(1, steps_per_epoch // 5))
