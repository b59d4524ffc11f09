"""Prune a small BERT classifier to 50% with Hugging Face's ``Trainer``; stop, then resume.

    python examples/integrations/hf_trainer.py --out runs/hf --stop-at 30   # 30 of 60 steps, then "crash"
    python examples/integrations/hf_trainer.py --out runs/hf --resume       # on from the last checkpoint

Offline: the model is built from a config (random weights), the data (is the first token above the
last?) is made here. ``PruningTrainer`` builds prunekit's AdamW from the TrainingArguments; the masks
and the prune step counter are saved in each checkpoint's optimizer.pt and resumed from it.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from prunekit.integrations import unwrap_optimizer  # noqa: E402
from prunekit.integrations.hf import PruningTrainer  # noqa: E402


def data(n=512, length=12, vocab=60):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones(length, dtype=torch.long), "labels": int(x[0] > x[-1])}
            for x in ids]


class StopAt(transformers.TrainerCallback):
    """Ends training after a given step, as an interrupted job would (a checkpoint is saved there)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hf")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--stop-at", type=int, default=None, help="stop after this step (checkpoint saved)")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")
    parser.add_argument("--target-sparsity", type=float, default=0.5)
    a = parser.parse_args(argv)

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    args = transformers.TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=16,
                                          learning_rate=2e-3, weight_decay=0.01, save_steps=max(1, a.steps // 4),
                                          logging_steps=max(1, a.steps // 4), report_to=[], disable_tqdm=True,
                                          use_cpu=True, seed=0)
    trainer = PruningTrainer(
        model=transformers.BertForSequenceClassification(config), args=args, train_dataset=data(),
        pruning_optimizer="adamw",  # or "sgd", "adam", a torch.optim class, None for args.optim
        pruning=dict(target_sparsity=a.target_sparsity, pretrain_step=a.steps // 6, sparse_step=a.steps // 2,
                     frequency=max(1, a.steps // 12), keywords_no_sparse=["bias", "LayerNorm", "embeddings"]),
        callbacks=[StopAt(a.stop_at)] if a.stop_at else None)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    per_tensor, total = unwrap_optimizer(trainer.optimizer).sparsity()
    print(f"step {trainer.state.global_step}: sparsity {total:.4f} over {len(per_tensor)} weight matrices")


if __name__ == "__main__":
    main()
