"""Prune the seed's simple CNN with TensorFlow's v1 API: MomentumOptimizerSparse instead of MomentumOptimizer.

    python examples/mnist/tensorflow1_pruning_simple.py --dataset fashion-mnist --epochs 12

Smallest run (seconds, generated data; tests/test_examples.py runs exactly this):

    python examples/mnist/tensorflow1_pruning_simple.py --dataset synthetic --epochs 1 --train-subset 500

Saves a tf.compat.v1.train.Saver checkpoint (weights, masks, global step) at --out.
"""

import tensorflow as tf

import prunekit.tf1 as pruning
from np_common import batches, dataset, parser, schedule
from tf1_model import accuracy, nhwc, seed_cnn

v1 = tf.compat.v1


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", default="tf1_pruned/model")
    args = p.parse_args()
    v1.disable_eager_execution()
    v1.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = dataset(args)
    x_train, x_test = nhwc(x_train), nhwc(x_test)
    steps = len(x_train) // args.batch_size
    x = v1.placeholder(tf.float32, [None, 28, 28, 1])
    y = v1.placeholder(tf.int64, [None])
    training = v1.placeholder_with_default(True, [])
    logits = seed_cnn(x, training)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    global_step = v1.train.get_or_create_global_step()
    lr = v1.train.cosine_decay(args.lr, global_step, args.epochs * steps)
    # optimizer = v1.train.MomentumOptimizer(lr, 0.9)
    optimizer = pruning.MomentumOptimizerSparse(lr, 0.9, target_sparsity=args.target_sparsity,
                                                keywords_no_sparse=["bias", "beta", "gamma", "conv1/"],
                                                **schedule(args, steps))
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        train_op = optimizer.minimize(loss, global_step=global_step)
    print(optimizer.plan)
    saver = v1.train.Saver()
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        for epoch in range(args.epochs):
            for i, (bx, by) in enumerate(batches(x_train, y_train, args.batch_size, epoch, args.seed)):
                session.run(train_op, {x: bx, y: by})
                if args.max_steps and session.run(global_step) >= args.max_steps:
                    break
            acc = accuracy(session, logits, x, training, x_test, y_test)
            print(f"epoch {epoch + 1}: test accuracy {acc:.4f}, sparsity {optimizer.sparsity(session)[1]:.4f}")
            if args.max_steps and session.run(global_step) >= args.max_steps:
                break
        print(f"saved {saver.save(session, args.out)}")


if __name__ == "__main__":
    main()
