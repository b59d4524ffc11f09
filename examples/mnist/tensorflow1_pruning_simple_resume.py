"""Continue from a sparse TF1 checkpoint: prune further keeping its zeros, or (--fix) fine-tune keeping its sparsity.

    python examples/mnist/tensorflow1_pruning_simple_resume.py --checkpoint tf1_pruned/model --target-sparsity 0.98
    python examples/mnist/tensorflow1_pruning_simple_resume.py --checkpoint tf1_pruned/model --fix --lr 0.005

Smallest run, after tensorflow1_pruning_simple.py's (tests/test_examples.py runs exactly these):

    python examples/mnist/tensorflow1_pruning_simple_resume.py --checkpoint tf1_pruned/model --target-sparsity 0.98 --dataset synthetic --epochs 1 --train-subset 500
    python examples/mnist/tensorflow1_pruning_simple_resume.py --checkpoint tf1_pruned/model --fix --lr 0.005 --dataset synthetic --epochs 1 --train-subset 500

Only the model's weights are read from the checkpoint (a new optimizer starts), as when fine-tuning a
pre-trained sparse model: ``restore_sparsity=True`` takes the masks from the weights (``w != 0``).
(The seed never finished this TensorFlow example.)
"""

import numpy as np
import tensorflow as tf

import prunekit.tf1 as pruning
from np_common import batches, dataset, parser, schedule
from tf1_model import accuracy, nhwc, seed_cnn

v1 = tf.compat.v1


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="tf1_pruned/model")
    p.add_argument("--fix", action="store_true")
    p.add_argument("--out", default="tf1_resumed/model")
    p.set_defaults(epochs=4, lr=0.01, target_sparsity=0.98)
    args = p.parse_args()
    v1.disable_eager_execution()
    x_train, y_train, x_test, y_test = dataset(args)
    x_train, x_test = nhwc(x_train), nhwc(x_test)
    steps = len(x_train) // args.batch_size
    x = v1.placeholder(tf.float32, [None, 28, 28, 1])
    y = v1.placeholder(tf.int64, [None])
    training = v1.placeholder_with_default(True, [])
    logits = seed_cnn(x, training)
    model_vars = v1.global_variables()
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    prune = dict(restore_sparsity=True, keywords_no_sparse=["bias", "beta", "gamma", "conv1/"])
    if args.fix:
        prune["fix_sparsity"] = True
    else:
        prune.update(target_sparsity=args.target_sparsity, **schedule(args, steps, pretrain=False))
    optimizer = pruning.MomentumOptimizerSparse(args.lr, 0.9, **prune)
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        train_op = optimizer.minimize(loss)
    kernels = [v for v in model_vars if v.name.endswith("kernel:0")]
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        v1.train.Saver(model_vars).restore(session, args.checkpoint)
        zeros = [w == 0 for w in session.run(kernels)]
        print(f"loaded {args.checkpoint}: test accuracy {accuracy(session, logits, x, training, x_test, y_test):.4f}")
        step = 0
        for epoch in range(args.epochs):
            for bx, by in batches(x_train, y_train, args.batch_size, epoch, args.seed):
                session.run(train_op, {x: bx, y: by})
                step += 1
                if args.max_steps and step >= args.max_steps:
                    break
            acc = accuracy(session, logits, x, training, x_test, y_test)
            print(f"epoch {epoch + 1}: test accuracy {acc:.4f}, sparsity {optimizer.sparsity(session)[1]:.4f}")
            if args.max_steps and step >= args.max_steps:
                break
        names = {v.name for v in kernels}
        kept = all(bool(np.all(w[z] == 0)) for w, z, v in zip(session.run(kernels), zeros, kernels)
                   if v.name in names and v.name in optimizer.plan.names)
        print(f"every zero of the loaded model is still zero: {kept}")
        if not kept:
            raise SystemExit("a restored zero came back")
        print(f"saved {v1.train.Saver().save(session, args.out)}")


if __name__ == "__main__":
    main()
