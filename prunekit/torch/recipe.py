"""One training recipe for the demo, ``prunekit train`` and the examples: dense warm-up, cubic ramp,
fine-tune, with a pruning optimizer swapped in for the plain one.

Epochs set the schedule: ``pretrain_step = dense_epochs * steps_per_epoch``, ``sparse_step =
ramp_epochs * steps_per_epoch``, ``frequency = steps_per_epoch // 5`` (the seed's choice), unless the
pruning arguments give them. A checkpoint is written atomically after every epoch and a run resumed
from it ends bit-identical to an uninterrupted one (the data order depends only on seed and epoch).
"""

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import prunekit.torch as pruning
from prunekit.data import load
from prunekit.errors import ConfigError
from prunekit.torch.models import SEED_CNN_DENSE, build_model

__all__ = ["Recipe", "run", "load_checkpoint", "OPTIMIZERS"]

OPTIMIZERS = {"sgd": (pruning.SGDSparse, torch.optim.SGD), "adam": (pruning.AdamSparse, torch.optim.Adam),
              "adamw": (pruning.AdamWSparse, torch.optim.AdamW)}


@dataclass
class Recipe:
    """Everything a run needs; stored in its checkpoints."""

    dataset: str = "fashion-mnist"
    data_root: str = None
    download: bool = False
    train_subset: int = None
    test_subset: int = None
    model: str = "seed-cnn"
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-5
    batch_size: int = 128
    dense_epochs: int = 3
    ramp_epochs: int = 6
    finetune_epochs: int = 3
    max_steps: int = None
    seed: int = 0
    compile_step: bool = False
    prune: dict = field(default_factory=lambda: {"target_sparsity": 0.95, "keywords_no_sparse": list(SEED_CNN_DENSE)})

    @property
    def epochs(self):
        return self.dense_epochs + self.ramp_epochs + self.finetune_epochs

    def validate(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        for name in ("dense_epochs", "ramp_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.epochs < 1:
            raise ConfigError("the recipe needs at least one epoch")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")


def _optimizer(recipe, model, sparse, steps_per_epoch):
    sparse_cls, base_cls = OPTIMIZERS[recipe.optimizer]
    base_args = {"lr": recipe.lr, "weight_decay": recipe.weight_decay}
    if recipe.optimizer == "sgd":
        base_args["momentum"] = recipe.momentum
    if not sparse:
        return base_cls(model.parameters(), **base_args)
    prune = dict(recipe.prune)
    prune.setdefault("pretrain_step", recipe.dense_epochs * steps_per_epoch)
    prune.setdefault("sparse_step", recipe.ramp_epochs * steps_per_epoch)
    prune.setdefault("frequency", max(1, steps_per_epoch // 5))
    return sparse_cls(model.parameters(), param_name=model.named_parameters(), compile_step=recipe.compile_step,
                      **base_args, **prune)


class _Progress:
    """A tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, total, desc, quiet=False):
        self.quiet, self.total, self.desc, self.bar, self.count = quiet, total, desc, None, 0
        if not quiet and sys.stdout.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, **info):
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**info, refresh=False)
        elif not self.quiet and (self.count % max(1, self.total // 4) == 0):
            text = " ".join(f"{k}={v}" for k, v in info.items())
            print(f"  {self.desc}: step {self.count}/{self.total} {text}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def _accuracy(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def _save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """Load a checkpoint written by :func:`run`; a clear error when it is not one."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"{path!r} is not a readable torch checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ConfigError(f"{path!r} is not a prunekit checkpoint (no 'model' entry)")
    return ckpt


def _state_size(state_dict):
    import io
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def run(recipe, out_dir, baseline=False, resume=None, init_from=None, quiet=False, log=print):
    """Train ``recipe``; write ``checkpoint.pt`` (every epoch), ``summary.json`` into ``out_dir``.

    Args:
        recipe: a :class:`Recipe`.
        out_dir: output directory (created).
        baseline: also train a dense model with the base optimizer on the same batches.
        resume: a checkpoint path to continue from (its recipe must match).
        init_from: a checkpoint whose model weights start this run (fine-tuning a sparse model).
        quiet: no progress output.

    Returns:
        The summary dict (also written to ``summary.json``).
    """
    recipe.validate()
    os.makedirs(out_dir, exist_ok=True)
    data = load(recipe.dataset, root=recipe.data_root, download=recipe.download)
    data = data.subset(recipe.train_subset, recipe.test_subset)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    steps_per_epoch = max(1, len(x_train) // recipe.batch_size)
    torch.manual_seed(recipe.seed)
    runs = {"pruned": build_model(recipe.model, data.classes)}
    if baseline:
        runs["dense"] = build_model(recipe.model, data.classes)
        runs["dense"].load_state_dict(runs["pruned"].state_dict())
    if init_from:
        runs["pruned"].load_state_dict(load_checkpoint(init_from)["model"])
    opts = {k: _optimizer(recipe, m, k == "pruned", steps_per_epoch) for k, m in runs.items()}
    total_steps = recipe.epochs * steps_per_epoch
    scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total_steps) for k, o in opts.items()}
    history, start_epoch = [], 0
    if resume:
        ckpt = load_checkpoint(resume)
        saved = ckpt.get("recipe")
        if isinstance(saved, dict):  # a field added since the checkpoint was written has its default value
            saved = {**dataclasses.asdict(Recipe()), **saved}
        if saved != dataclasses.asdict(recipe):
            raise ConfigError(f"{resume!r} was written by a different recipe; resume needs the same flags "
                              f"(saved: {ckpt.get('recipe')})")
        for k in runs:
            runs[k].load_state_dict(ckpt["models"][k])
            opts[k].load_state_dict(ckpt["optimizers"][k])
            scheds[k].load_state_dict(ckpt["schedulers"][k])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        log(f"resumed from {resume} at epoch {start_epoch}")
    opt = opts["pruned"]
    log(f"data: {data.name} from {data.source}: {len(x_train)} train / {len(x_test)} test images")
    log(f"plan ({recipe.optimizer}, pattern {opt.plan.specs[0].pattern if len(opt.plan) else '-'}):\n{opt.plan}")
    header = f"{'epoch':>5} {'phase':<9} {'loss':>7} {'test acc':>9} {'sparsity':>9} {'ms/step':>8}"
    if baseline:
        header += f" {'dense acc':>9}"
    log(header)
    for row in history:
        log(_format_row(row, baseline))
    loss_fn = torch.nn.CrossEntropyLoss()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, recipe.epochs):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(recipe.seed * 1000 + epoch))
        progress = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{recipe.epochs}", quiet)
        losses, times = [], []
        for i in range(steps_per_epoch):
            if recipe.max_steps is not None and step >= recipe.max_steps:
                break
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            for key, model in runs.items():
                started = time.perf_counter()
                opts[key].zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opts[key].step()
                scheds[key].step()
                if key == "pruned":
                    times.append(time.perf_counter() - started)
                    losses.append(loss.item())
            step += 1
            if i % 20 == 0:
                shown_sparsity = opt.sparsity()[1]  # a pass over the weights: not every step
            progress.update(loss=f"{losses[-1]:.3f}", sparsity=f"{shown_sparsity:.3f}")
        progress.close()
        row = {"epoch": epoch + 1, "step": step, "phase": _phase(recipe, epoch),
               "loss": float(np.mean(losses)) if losses else float("nan"),
               "test_acc": _accuracy(runs["pruned"], x_test, y_test), "sparsity": opt.sparsity()[1],
               "ms_per_step": 1e3 * float(np.median(times)) if times else float("nan"),
               "lr": opts["pruned"].param_groups[0]["lr"]}
        if baseline:
            row["dense_acc"] = _accuracy(runs["dense"], x_test, y_test)
        history.append(row)
        log(_format_row(row, baseline))
        _save_atomic({"model": runs["pruned"].state_dict(), "models": {k: m.state_dict() for k, m in runs.items()},
                      "optimizers": {k: o.state_dict() for k, o in opts.items()},
                      "schedulers": {k: s.state_dict() for k, s in scheds.items()},
                      "epoch": epoch + 1, "history": history, "recipe": dataclasses.asdict(recipe)},
                     os.path.join(out_dir, "checkpoint.pt"))
        if recipe.max_steps is not None and step >= recipe.max_steps:
            break
    return _summarize(recipe, runs, opt, history, x_test, out_dir, baseline, data)


def _phase(recipe, epoch):
    if epoch < recipe.dense_epochs:
        return "dense"
    return "ramp" if epoch < recipe.dense_epochs + recipe.ramp_epochs else "fine-tune"


def _format_row(row, baseline):
    text = (f"{row['epoch']:>5} {row['phase']:<9} {row['loss']:>7.4f} {row['test_acc']:>9.4f} "
            f"{row['sparsity']:>9.4f} {row['ms_per_step']:>8.1f}")
    if baseline and "dense_acc" in row:
        text += f" {row['dense_acc']:>9.4f}"
    return text


def _summarize(recipe, runs, opt, history, x_test, out_dir, baseline, data):
    model = runs["pruned"]
    per_tensor, total = opt.sparsity()
    report = pruning.macs(model, x_test[:1])
    summary = {
        "recipe": dataclasses.asdict(recipe), "dataset_source": data.source,
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max(r["test_acc"] for r in history) if history else None,
        "sparsity": total, "per_tensor_sparsity": per_tensor,
        "dense_macs": report.dense, "effective_macs": report.effective, "pruning_rate": report.pruning_rate,
        "per_layer_macs": list(report.per_layer),
        "checkpoint_bytes": os.path.getsize(os.path.join(out_dir, "checkpoint.pt")) if history else None,
        "model_state_bytes": _state_size(model.state_dict()),
        "sparse_bytes": pruning.save_sparse(model, os.path.join(out_dir, "model.safetensors"))["bytes"],
        "history": history,
    }
    if baseline and history:
        summary["dense_final_test_acc"] = history[-1]["dense_acc"]
        summary["dense_best_test_acc"] = max(r["dense_acc"] for r in history)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def plot(summary, path):
    """Accuracy and sparsity against step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    history = summary["history"]
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["test_acc"] for r in history], "o-", label="pruned: test accuracy")
    if "dense_acc" in history[0]:
        ax.plot(steps, [r["dense_acc"] for r in history], "s--", label="dense baseline: test accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["sparsity"] for r in history], "^-", color="tab:red", label="sparsity")
    ax2.set_ylabel("sparsity")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right")
    ax.set_title(f"{summary['recipe']['model']} on {summary['recipe']['dataset']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
