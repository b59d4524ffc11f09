"""Shared bits of the PyTorch MNIST examples: arguments, data loaders, evaluation."""

import argparse

import torch

from np_common import schedule  # noqa: F401  (the same schedule as the other frameworks' examples)
from prunekit.data import load


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist", "digits", "synthetic"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true", help="allow torchvision to download MNIST")
    p.add_argument("--epochs", type=int, default=12, help="a quarter dense, half ramp, a quarter fine-tune")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    return p


def loaders(args):
    data = load(args.dataset, root=args.data_root, download=args.download).subset(args.train_subset)
    train = torch.utils.data.TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    test = torch.utils.data.TensorDataset(torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    g = torch.Generator().manual_seed(args.seed)
    return (torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g, drop_last=True),
            torch.utils.data.DataLoader(test, batch_size=1000))


@torch.no_grad()
def accuracy(model, loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train()
    return correct / total
