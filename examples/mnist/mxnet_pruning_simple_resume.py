"""Continue from sparse MXNet weights: prune further keeping their zeros, or (--fix) fine-tune keeping the sparsity.

    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple_resume.py --params mx_pruned.params --target-sparsity 0.98
    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple_resume.py --params mx_pruned.params --fix --lr 0.005

(The environment: see mxnet_pruning_simple.py.) Smallest run, after mxnet_pruning_simple.py's
(tests/test_examples.py runs exactly these):

    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple_resume.py --params mx_pruned.params --target-sparsity 0.98 --dataset synthetic --epochs 1 --train-subset 500
    .venv-mxnet/bin/python examples/mnist/mxnet_pruning_simple_resume.py --params mx_pruned.params --fix --lr 0.005 --dataset synthetic --epochs 1 --train-subset 500
"""

import numpy as np
from mxnet import gluon

import prunekit.mxnet  # noqa: F401
from mxnet_pruning_simple import accuracy, seed_cnn, train
from np_common import dataset, parser, schedule


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--params", default="mx_pruned.params")
    p.add_argument("--fix", action="store_true")
    p.add_argument("--out", default="mx_resumed")
    p.set_defaults(epochs=4, lr=0.01, target_sparsity=0.98)
    args = p.parse_args()
    x_train, y_train, x_test, y_test = dataset(args)
    steps = len(x_train) // args.batch_size
    net = seed_cnn()
    net.load_parameters(args.params)
    print(f"loaded {args.params}: test accuracy {accuracy(net, x_test, y_test):.4f}")
    kernels = {k: v for k, v in net.collect_params().items() if k.endswith("weight") and "conv1_" not in k}
    zeros = {k: v.data().asnumpy() == 0 for k, v in kernels.items()}
    prune = {"restore_sparsity": True, "keywords_no_sparse": ["bias", "beta", "gamma", "conv1_"]}
    if args.fix:
        prune["fix_sparsity"] = True
    else:
        prune.update(target_sparsity=args.target_sparsity, **schedule(args, steps, pretrain=False))
    trainer = gluon.Trainer(net.collect_params(), "nagsparse", {"learning_rate": args.lr, "momentum": 0.9, **prune})
    train(net, trainer, args, x_train, y_train, x_test, y_test, args.epochs)
    kept = all(bool(np.all(kernels[k].data().asnumpy()[z] == 0)) for k, z in zeros.items())
    print(f"every zero of the loaded model is still zero: {kept}")
    if not kept:
        raise SystemExit("a restored zero came back")
    net.save_parameters(args.out + ".params")
    print(f"saved {args.out}.params")


if __name__ == "__main__":
    main()
