"""Prune a small GPT-style language model to 50% and to 2:4 with Hugging Face's ``Trainer``.

    sudo apt-get install fortunes                     # the corpus: ~2.5 MB of English text in /usr/share/games/fortunes
    python examples/integrations/gpt_prune.py --out runs/gpt   # 1000 steps per run

Trains the same GPT-NeoX-style decoder (random init, bytes as tokens, every linear layer an
``nn.Linear`` with its input axis last, as 2:4 sparse tensor cores need) three times on the same data:
dense, 50% unstructured and 2:4 (``NM(2, 4)``: keep 2 of every 4 inputs), the sparse runs through
``PruningTrainer`` with a gradual schedule (dense for the first 20% of steps, ramp over the next 50%,
then fine-tune at the target). Prints, for each, the perplexity per byte on held-out fortunes (every 20th
one) and the MACs of the pruned linear layers for one sequence (dense, and what a kernel that skips
zeros would do). Embeddings, the output layer, norms and biases stay dense.
"""

import argparse
import glob
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import prunekit.torch as pruning  # noqa: E402
from prunekit.integrations import unwrap_optimizer  # noqa: E402
from prunekit.integrations.hf import PruningTrainer  # noqa: E402

PATTERNS = {"dense": None, "unstructured": pruning.Unstructured(), "2:4": pruning.NM(2, 4)}
DENSE_NAMES = ["bias", "layernorm", "embed", "lm_head"]  # keywords_no_sparse: embeddings, output layer, norms, biases


def read_corpus(path, holdout_every=20):
    """Bytes of every text file under ``path`` (fortune files: entries end with a '%' line), split into
    train and validation by entry: every ``holdout_every``-th entry is held out."""
    files = sorted(f for f in glob.glob(os.path.join(path, "*")) if os.path.isfile(f)
                   and not f.endswith((".dat", ".u8")) and not os.path.islink(f)) if os.path.isdir(path) else [path]
    if not files:
        raise SystemExit(f"no text files in {path}; install the corpus with: sudo apt-get install fortunes")
    entries = []
    for f in files:
        with open(f, "rb") as fh:
            entries += [e.strip() + b"\n" for e in fh.read().split(b"\n%\n") if e.strip()]
    train = b"".join(e for i, e in enumerate(entries) if i % holdout_every)
    val = b"".join(e for i, e in enumerate(entries) if not i % holdout_every)
    return (torch.frombuffer(bytearray(train), dtype=torch.uint8).long(),
            torch.frombuffer(bytearray(val), dtype=torch.uint8).long())


class Windows(torch.utils.data.Dataset):
    """``count`` windows of ``length`` bytes: at seeded random offsets, or back to back (``random=False``)."""

    def __init__(self, stream, length, count, random=True, seed=0):
        self.stream, self.length = stream, length
        last = len(stream) - length - 1
        if random:
            self.starts = torch.randint(0, last, (count,), generator=torch.Generator().manual_seed(seed))
        else:
            self.starts = torch.arange(0, last, length)[:count]

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        x = self.stream[self.starts[i]:self.starts[i] + self.length]
        return {"input_ids": x, "labels": x}


def build_model(a):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=256, hidden_size=a.hidden, num_hidden_layers=a.layers,
                                        num_attention_heads=a.heads, intermediate_size=4 * a.hidden,
                                        max_position_embeddings=a.context, rotary_pct=0.25,
                                        attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False)
    return transformers.GPTNeoXForCausalLM(config)


def train(pattern, a, train_data, val_data):
    model = build_model(a)
    steps = a.steps
    prune = dict(target_sparsity=0.0)
    if PATTERNS[pattern] is not None:
        prune = dict(target_sparsity=0.5, pattern=PATTERNS[pattern], pretrain_step=steps // 5,
                     sparse_step=steps // 2, frequency=max(1, steps // 40), keywords_no_sparse=DENSE_NAMES)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(a.out, pattern.replace(":", "of")), max_steps=steps,
        per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=32, learning_rate=a.lr,
        weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), max_grad_norm=1.0,
        save_strategy="no", logging_steps=max(1, steps // 10), report_to=[], disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=0)
    trainer = PruningTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=val_data,
                             pruning_optimizer="adamw", pruning=prune)
    trainer.train()
    loss = trainer.evaluate()["eval_loss"]
    return model, unwrap_optimizer(trainer.optimizer), loss


def pruned_linear_macs(model, context):
    """Dense and effective MACs of the linear layers that the sparse runs prune (the same in every run)."""
    plan = pruning.SGDSparse(model.named_parameters(), target_sparsity=0.5, keywords_no_sparse=DENSE_NAMES).plan
    report = pruning.macs(model, torch.zeros(1, context, dtype=torch.long))
    rows = [r for r in report.per_layer if r["name"] + ".weight" in plan.names]
    return sum(r["dense"] for r in rows), sum(r["effective"] for r in rows), len(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="/usr/share/games/fortunes", help="a text file or a folder of them")
    parser.add_argument("--out", default="runs/gpt")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-windows", type=int, default=1024)
    parser.add_argument("--patterns", default="dense,unstructured,2:4")
    a = parser.parse_args(argv)
    patterns = a.patterns.split(",")
    unknown = [p for p in patterns if p not in PATTERNS]
    if unknown:
        parser.error(f"--patterns: unknown {unknown}; accepted: {list(PATTERNS)}")

    train_stream, val_stream = read_corpus(a.corpus)
    train_data = Windows(train_stream, a.context, a.steps * a.batch_size)
    val_data = Windows(val_stream, a.context, a.eval_windows, random=False)
    print(f"corpus {a.corpus}: {len(train_stream):,} train bytes, {len(val_stream):,} held out "
          f"({len(val_data) * a.context:,} evaluated)")
    rows = []
    for pattern in patterns:
        model, optimizer, loss = train(pattern, a, train_data, val_data)
        dense, effective, layers = pruned_linear_macs(model, a.context)
        per_tensor, total = optimizer.sparsity()
        if pattern == "2:4":  # the pattern sparse tensor cores need: at most 2 non-zeros in each 4 inputs
            ok = all(int((w.detach().reshape(-1, 4) != 0).sum(1).max()) <= 2
                     for n, w in model.named_parameters() if n in per_tensor)
            print(f"2:4: every group of 4 inputs of the {len(per_tensor)} pruned matrices keeps at most 2: {ok}")
        rows.append((pattern, total, loss, math.exp(loss), dense, effective, layers))
        print(f"done {pattern}: eval loss {loss:.4f}", flush=True)

    print(f"\n{'pattern':<14} {'sparsity':>8} {'eval loss':>9} {'ppl/byte':>8} {'linear MACs':>12} "
          f"{'effective':>12}  (pruned linears: {rows[0][6]}, one {a.context}-byte sequence)")
    for pattern, sparsity, loss, ppl, dense, effective, _ in rows:
        print(f"{pattern:<14} {sparsity:>8.4f} {loss:>9.4f} {ppl:>8.3f} {dense:>12,} {effective:>12,.0f}")


if __name__ == "__main__":
    main()
