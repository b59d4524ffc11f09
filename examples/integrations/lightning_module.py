"""Prune an MLP to 80% in Lightning: ``configure_optimizers`` returns a pruning optimizer.

    python examples/integrations/lightning_module.py --out runs/pl --epochs 3            # stop after 3 epochs
    python examples/integrations/lightning_module.py --out runs/pl --epochs 6 --resume   # on from last.ckpt

The masks and the prune step counter are optimizer state, so Lightning's checkpoint carries them and
``fit(ckpt_path=...)`` resumes pruning where it stopped. The model is untouched (no ``weight_orig``,
no hooks): its checkpoint keys are its own, and under DDP every rank computes the same masks.
"""

import argparse
import os

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl

import prunekit.torch as pruning


class Classifier(pl.LightningModule):
    def __init__(self, target_sparsity=0.8):
        super().__init__()
        self.target_sparsity = target_sparsity
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return pruning.SGDSparse(self.named_parameters(), lr=0.1, momentum=0.9, target_sparsity=self.target_sparsity,
                                 pretrain_step=16, sparse_step=48, frequency=8)


def loader(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, num_workers=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pl")
    parser.add_argument("--epochs", type=int, default=6)  # 16 steps an epoch
    parser.add_argument("--resume", action="store_true", help="resume from last.ckpt in --out")
    a = parser.parse_args(argv)

    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=a.epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=a.out, save_last=True)])
    model = Classifier()
    trainer.fit(model, loader(), ckpt_path=os.path.join(a.out, "last.ckpt") if a.resume else None)
    per_tensor, total = trainer.optimizers[0].sparsity()
    print(f"step {trainer.global_step}: sparsity {total:.4f} "
          + " ".join(f"{name} {s:.3f}" for name, s in per_tensor.items()))


if __name__ == "__main__":
    main()
