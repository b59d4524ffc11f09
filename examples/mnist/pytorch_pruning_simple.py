"""Prune the seed's simple CNN while training it: the only change from dense training is the optimizer.

    python examples/mnist/pytorch_pruning_simple.py --dataset fashion-mnist --epochs 12

Smallest run (seconds, generated data; tests/test_examples.py runs exactly this):

    python examples/mnist/pytorch_pruning_simple.py --dataset synthetic --epochs 1 --train-subset 500

Writes ``pruned.pt`` (model and optimizer state) for pytorch_pruning_simple_resume.py.
"""

import torch

import prunekit.torch as pruning
from common import accuracy, loaders, parser, schedule
from prunekit.torch.models import SeedCNN


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--target-sparsity", type=float, default=0.95)
    p.add_argument("--out", default="pruned.pt")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_loader, test_loader = loaders(args)
    steps_per_epoch = len(train_loader)
    model = SeedCNN()

    # optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-5)
    optimizer = pruning.SGDSparse(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-5,
                                  param_name=model.named_parameters(),
                                  target_sparsity=args.target_sparsity,
                                  keywords_no_sparse=["bias", "beta", "gamma", "conv1."],
                                  # a quarter of the steps dense, half a cubic ramp, prune events 5x an epoch
                                  **schedule(args, steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    print(optimizer.plan)
    step = 0
    for epoch in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        per_layer, total = optimizer.sparsity()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, test_loader):.4f}, sparsity {total:.4f}")
        if args.max_steps and step >= args.max_steps:
            break
    report = pruning.macs(model, next(iter(test_loader))[0][:1])
    print(f"pruning rate (1 - effective/dense MACs): {report.pruning_rate:.4f}")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
