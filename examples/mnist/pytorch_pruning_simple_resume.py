"""Continue from a sparse checkpoint: prune further keeping its zeros, or (--fix) fine-tune keeping its sparsity.

    python examples/mnist/pytorch_pruning_simple_resume.py --checkpoint pruned.pt --target-sparsity 0.98
    python examples/mnist/pytorch_pruning_simple_resume.py --checkpoint pruned.pt --fix --lr 0.005

Smallest run, after pytorch_pruning_simple.py's (tests/test_examples.py runs exactly these):

    python examples/mnist/pytorch_pruning_simple_resume.py --checkpoint pruned.pt --target-sparsity 0.98 --dataset synthetic --epochs 1 --train-subset 500
    python examples/mnist/pytorch_pruning_simple_resume.py --checkpoint pruned.pt --fix --lr 0.005 --dataset synthetic --epochs 1 --train-subset 500

``restore_sparsity=True`` reads the masks from the weights (``weight != 0``), so the zeros of the
loaded model never come back; with ``fix_sparsity=True`` the masks never change.
"""

import torch

import prunekit.torch as pruning
from common import accuracy, loaders, parser, schedule
from prunekit.torch.models import SeedCNN


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="pruned.pt")
    p.add_argument("--target-sparsity", type=float, default=0.98)
    p.add_argument("--fix", action="store_true", help="keep the loaded sparsity (fine-tune only)")
    p.add_argument("--out", default="resumed.pt")
    p.set_defaults(epochs=4, lr=0.01)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_loader, test_loader = loaders(args)
    steps_per_epoch = len(train_loader)
    model = SeedCNN()
    model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["model"])
    print(f"loaded {args.checkpoint}: test accuracy {accuracy(model, test_loader):.4f}")

    prune_args = dict(restore_sparsity=True, keywords_no_sparse=["bias", "beta", "gamma", "conv1."])
    if args.fix:
        prune_args["fix_sparsity"] = True
    else:
        prune_args.update(target_sparsity=args.target_sparsity, **schedule(args, steps_per_epoch, pretrain=False))
    optimizer = pruning.SGDSparse(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-5,
                                  param_name=model.named_parameters(), **prune_args)
    zeros_before = {n: (p == 0) for n, p in model.named_parameters() if n in optimizer.plan.names}
    step = 0
    for epoch in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, test_loader):.4f}, "
              f"sparsity {optimizer.sparsity()[1]:.4f}")
        if args.max_steps and step >= args.max_steps:
            break
    params = dict(model.named_parameters())
    kept = all(bool((params[n][z] == 0).all()) for n, z in zeros_before.items())
    print(f"every zero of the loaded model is still zero: {kept}")
    if not kept:
        raise SystemExit("a restored zero came back")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
