"""Prune the seed's simple CNN while training it: the only change from dense training is the optimizer.

    python examples/mnist/pytorch_pruning_simple.py --dataset fashion-mnist --epochs 12

Writes ``pruned.pt`` (model and optimizer state) for pytorch_pruning_simple_resume.py.
"""

import torch

import prunekit.torch as pruning
from common import accuracy, loaders, parser
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
                                  pretrain_step=args.epochs // 4 * steps_per_epoch,    # dense warm-up
                                  sparse_step=args.epochs // 2 * steps_per_epoch,      # cubic ramp
                                  frequency=steps_per_epoch / 5,                       # floored
                                  keywords_no_sparse=["bias", "beta", "gamma", "conv1."])
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
