"""Prune an MLP to 90% in a training loop run by Accelerate; save its state, stop, resume.

    python examples/integrations/accelerate_loop.py --out runs/acc --stop-at 40   # save_state after step 40
    python examples/integrations/accelerate_loop.py --out runs/acc --resume       # load_state, run on to 80

``accelerator.prepare`` wraps the pruning optimizer like any other; ``save_state``/``load_state`` carry
its masks and step counter with the model, the scheduler and the random states.
"""

import argparse

import torch
from accelerate import Accelerator

import prunekit.torch as pruning
from prunekit.integrations import unwrap_optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/acc")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--stop-at", type=int, default=None, help="save_state after this step and stop")
    parser.add_argument("--resume", action="store_true", help="load_state from --out and go on")
    a = parser.parse_args(argv)

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = pruning.AdamWSparse(model.named_parameters(), lr=3e-3, weight_decay=0.01, target_sparsity=0.9,
                                    pretrain_step=a.steps // 8, sparse_step=a.steps // 2, frequency=5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=a.steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * a.steps, 20, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    done, batches = 0, loader
    if a.resume:
        accelerator.load_state(a.out)
        done = int(torch.load(f"{a.out}/done.pt"))
        batches = accelerator.skip_first_batches(loader, done)
    for step, (xb, yb) in enumerate(batches, start=done + 1):
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.cross_entropy(model(xb), yb))
        optimizer.step()
        scheduler.step()
        if step == a.stop_at:
            accelerator.save_state(a.out)
            torch.save(torch.tensor(step), f"{a.out}/done.pt")
            break
    print(f"step {step}: sparsity {unwrap_optimizer(optimizer).sparsity()[1]:.4f}")


if __name__ == "__main__":
    main()
