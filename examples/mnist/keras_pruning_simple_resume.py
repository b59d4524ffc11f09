"""Continue from a sparse Keras model: prune further keeping its zeros, or (--fix) fine-tune keeping its sparsity.

    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple_resume.py --model pruned.keras --target-sparsity 0.98
    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple_resume.py --model pruned.keras --fix --lr 0.005

Smallest run, after keras_pruning_simple.py's (tests/test_examples.py runs exactly these):

    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple_resume.py --model pruned.keras --target-sparsity 0.98 --dataset synthetic --epochs 1 --train-subset 500
    KERAS_BACKEND=tensorflow python examples/mnist/keras_pruning_simple_resume.py --model pruned.keras --fix --lr 0.005 --dataset synthetic --epochs 1 --train-subset 500

``keras.models.load_model`` restores the weights (and the first run's optimizer, which is replaced here).
A new optimizer with ``restore_sparsity=True`` takes its masks from the loaded weights (``w != 0``), so no
zero of the loaded model comes back; with ``fix_sparsity=True`` the masks never change.
"""

import numpy as np

import keras
import prunekit.keras as pruning  # also registers SGDSparse, so that load_model can rebuild pruned.keras
from np_common import dataset, parser, schedule

KEEP_DENSE = ["bias", "beta", "gamma", "conv1."]


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="pruned.keras")
    p.add_argument("--fix", action="store_true", help="keep the loaded sparsity (fine-tune only)")
    p.add_argument("--out", default="resumed.keras")
    p.set_defaults(epochs=4, lr=0.01, target_sparsity=0.98)
    args = p.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = dataset(args)
    x_train, x_test = np.transpose(x_train, (0, 2, 3, 1)), np.transpose(x_test, (0, 2, 3, 1))  # NHWC
    steps = len(x_train) // args.batch_size
    if args.max_steps:
        x_train, y_train = x_train[:args.max_steps * args.batch_size], y_train[:args.max_steps * args.batch_size]
    model = keras.models.load_model(args.model)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    print(f"loaded {args.model}: test accuracy {model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1]:.4f}")

    prune = dict(restore_sparsity=True, keywords_no_sparse=KEEP_DENSE)
    if args.fix:
        prune["fix_sparsity"] = True
    else:
        prune.update(target_sparsity=args.target_sparsity, **schedule(args, steps, pretrain=False))
    optimizer = pruning.SGDSparse(learning_rate=args.lr, momentum=0.9, **prune)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel") and "conv1" not in v.path]
    zeros = [keras.ops.convert_to_numpy(v) == 0 for v in kernels]
    for epoch in range(1 if args.max_steps else args.epochs):
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=1, verbose=0)
        _, acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}, sparsity {optimizer.sparsity()[1]:.4f}")
    kept = all(bool(np.all(keras.ops.convert_to_numpy(v)[z] == 0)) for v, z in zip(kernels, zeros))
    print(f"every zero of the loaded model is still zero: {kept}")
    if not kept:
        raise SystemExit("a restored zero came back")
    model.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
