

import torch


def small_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def batches(n, seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 8, (batch,), generator=g)) for _ in range(n)]


def train(model, opt, data, closure=False):
    loss_fn = torch.nn.CrossEntropyLoss()
    for x, y in data:
        if closure:
            def run():
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss
            opt.step(run)
        else:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    return model
