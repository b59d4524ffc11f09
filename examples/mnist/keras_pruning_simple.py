"""Prune the seed's simple CNN with Keras 3 (model.fit): the only change is the optimizer.

    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple.py --dataset fashion-mnist --epochs 12

Smallest run (seconds, generated data; tests/test_examples.py runs exactly this):

    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple.py --dataset synthetic --epochs 1 --train-subset 500

Saves ``pruned.keras``; ``keras.models.load_model`` restores the model *and* the pruning state.
"""

import numpy as np

import keras
import prunekit.keras as pruning
from np_common import dataset, parser, schedule


def seed_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(64, 3, strides=2, name="conv1"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(128, 3, strides=2, name="conv2"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(256, 3, strides=2, name="conv3"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Flatten(), keras.layers.Dense(10, name="linear1")])


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", default="pruned.keras")
    args = p.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = dataset(args)
    x_train, x_test = np.transpose(x_train, (0, 2, 3, 1)), np.transpose(x_test, (0, 2, 3, 1))  # NHWC
    steps = len(x_train) // args.batch_size
    if args.max_steps:
        x_train, y_train = x_train[:args.max_steps * args.batch_size], y_train[:args.max_steps * args.batch_size]
    model = seed_cnn()
    lr = keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * steps)
    # optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    optimizer = pruning.SGDSparse(learning_rate=lr, momentum=0.9, target_sparsity=args.target_sparsity,
                                  keywords_no_sparse=["bias", "beta", "gamma", "conv1."], **schedule(args, steps))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    for epoch in range(1 if args.max_steps else args.epochs):
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=1, verbose=0)
        _, acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}, sparsity {optimizer.sparsity()[1]:.4f}")
    print(optimizer.plan)
    model.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
