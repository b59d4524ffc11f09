"""One training recipe for the demo, ``prunekit train`` and the examples: dense warm-up, cubic ramp,
fine-tune, with a pruning optimizer swapped in for the plain one.

Epochs set the schedule: ``pretrain_step = round(dense_epochs * steps_per_epoch)``, ``sparse_step =
round(ramp_epochs * steps_per_epoch)``, ``frequency = steps_per_epoch // 5`` (the seed's choice), unless the
pruning arguments give them. Epochs may be fractions (``--epochs 1`` is a quarter dense, half ramp, a
quarter fine-tune). A checkpoint is written atomically after every epoch (and where ``max_steps`` stops a
run); a run resumed from it ends bit-identical to an uninterrupted one (the data order depends only on
seed and epoch, and a run stopped mid-epoch resumes at the next batch of that epoch).

Checkpoints hold only tensors and plain Python values, so :func:`load_checkpoint` reads them with
``torch.load(weights_only=True)``: a crafted file cannot run code.
"""

import dataclasses
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import prunekit.torch as pruning
from prunekit.data import load
from prunekit.errors import ConfigError
from prunekit.torch.models import SEED_CNN_DENSE, build_model

__all__ = ["Recipe", "run", "load_checkpoint", "recipe_from_checkpoint", "recipe_differences", "OPTIMIZERS",
           "RESUME_MAY_CHANGE"]

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
    dense_epochs: float = 3
    ramp_epochs: float = 6
    finetune_epochs: float = 3
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
        if not self.epochs > 0:
            raise ConfigError("the recipe needs some training: dense_epochs + ramp_epochs + finetune_epochs is 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")


def _schedule_steps(recipe, steps_per_epoch):
    """``pretrain_step`` and ``sparse_step``: the pruning arguments' own, else from the epochs."""
    return {"pretrain_step": recipe.prune.get("pretrain_step", round(recipe.dense_epochs * steps_per_epoch)),
            "sparse_step": recipe.prune.get("sparse_step", round(recipe.ramp_epochs * steps_per_epoch))}


def _optimizer(recipe, model, sparse, steps_per_epoch):
    sparse_cls, base_cls = OPTIMIZERS[recipe.optimizer]
    base_args = {"lr": recipe.lr, "weight_decay": recipe.weight_decay}
    if recipe.optimizer == "sgd":
        base_args["momentum"] = recipe.momentum
    if not sparse:
        return base_cls(model.parameters(), **base_args)
    prune = {**recipe.prune, **_schedule_steps(recipe, steps_per_epoch)}
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
    """A checkpoint is the old file or the whole new one (a unique fsynced temporary name, renamed)."""
    from prunekit.io.atomic import atomic_path
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path):
    """Load a checkpoint written by :func:`run` (or any dict with a ``"model"`` state_dict).

    Only tensors and plain Python values are read (``torch.load(weights_only=True)``): a file that needs
    arbitrary objects unpickled is refused, never executed.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path!r} holds Python objects other than tensors and plain values ({first}); "
                          "prunekit loads checkpoints with torch.load(weights_only=True) and does not run "
                          "code from a file") from None
    except Exception as e:
        raise ConfigError(f"{path!r} is not a readable torch checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ConfigError(f"{path!r} is not a prunekit checkpoint (no 'model' state_dict entry)")
    return ckpt


# Recipe fields a resumed run may change: where the data is read from and when to stop. Everything else
# decides the result, so a resumed run must keep the saved value.
RESUME_MAY_CHANGE = ("max_steps", "data_root", "download")


def recipe_from_checkpoint(checkpoint, path="checkpoint"):
    """The :class:`Recipe` saved in a :func:`run` checkpoint (fields added since then get their defaults)."""
    saved = checkpoint.get("recipe")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path!r} holds no training recipe: it was not written by prunekit train, so it "
                          "cannot be resumed (use --init-from to start from its weights)")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ConfigError(f"{path!r} was written by a newer prunekit (recipe fields {unknown} are unknown here)")
    return Recipe(**{**saved, "max_steps": None})


def recipe_differences(saved, given):
    """``[(field, saved value, given value)]`` for the fields that differ and may not change on resume.

    A pruning argument is reported as ``prune.NAME``.
    """
    a, b = dataclasses.asdict(saved), dataclasses.asdict(given)
    diffs = [(k, a[k], b[k]) for k in a if k != "prune" and k not in RESUME_MAY_CHANGE and a[k] != b[k]]
    for k in sorted(set(a["prune"]) | set(b["prune"])):
        if a["prune"].get(k) != b["prune"].get(k):
            diffs.append((f"prune.{k}", a["prune"].get(k), b["prune"].get(k)))
    return diffs


def _load_weights(model, state, path):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"the weights in {path!r} do not fit this model: {detail[:300]}") from None


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
        resume: a checkpoint path to continue from. Its recipe must equal ``recipe`` except for the fields
            in :data:`RESUME_MAY_CHANGE` (:func:`recipe_from_checkpoint` gives it); the baseline is resumed
            when the checkpoint has one.
        init_from: a checkpoint whose model weights start this run (fine-tuning a sparse model).
        quiet: no progress output.

    Returns:
        The summary dict (also written to ``summary.json``, as strict JSON: a missing value is ``null``).
    """
    recipe.validate()
    ckpt = None
    if resume:
        if init_from:
            raise ConfigError("--init-from starts a new run and --resume continues one; give only one")
        ckpt = load_checkpoint(resume)
        diffs = recipe_differences(recipe_from_checkpoint(ckpt, resume), recipe)
        if diffs:
            raise ConfigError(f"{resume!r} was written by a different recipe: " + "; ".join(
                f"{k} saved {a!r}, given {b!r}" for k, a, b in diffs))
        baseline = "dense" in ckpt.get("models", {})
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
        source = load_checkpoint(init_from)
        _load_weights(runs["pruned"], source["model"], init_from)
        log(f"initialised the model from {init_from}: {len(source['model'])} tensors, "
            f"sparsity {_weight_sparsity(runs['pruned']):.4f} of its matrices/kernels")
    opts = {k: _optimizer(recipe, m, k == "pruned", steps_per_epoch) for k, m in runs.items()}
    total_steps = max(1, round(recipe.epochs * steps_per_epoch))
    scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total_steps) for k, o in opts.items()}
    history, step = [], 0
    if ckpt is not None:
        for k in runs:
            _load_weights(runs[k], ckpt["models"][k], resume)
            opts[k].load_state_dict(ckpt["optimizers"][k])
            scheds[k].load_state_dict(ckpt["schedulers"][k])
        history = list(ckpt["history"])
        step = ckpt.get("step", history[-1]["step"] if history else ckpt["epoch"] * steps_per_epoch)
        log(f"resumed from {resume} at step {step} of {total_steps} (epoch {step // steps_per_epoch + 1})")
    opt = opts["pruned"]
    log(f"data: {data.name} from {data.source}: {len(x_train)} train / {len(x_test)} test images")
    log(f"plan ({recipe.optimizer}, pattern {opt.plan.specs[0].pattern if len(opt.plan) else '-'}):\n{opt.plan}")
    header = f"{'epoch':>5} {'phase':<9} {'loss':>7} {'test acc':>9} {'sparsity':>9} {'ms/step':>8}"
    if baseline:
        header += f" {'dense acc':>9}"
    log(header)
    for row in history:
        log(_format_row(row, baseline))
    stop = total_steps if recipe.max_steps is None else min(total_steps, recipe.max_steps)
    if step >= stop:
        log(f"nothing to train: the run is at step {step} and stops at step {stop}"
            + (" (--max-steps)" if stop < total_steps else ""))
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(step // steps_per_epoch, math.ceil(total_steps / steps_per_epoch)):
        if step >= stop:
            break
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(recipe.seed * 1000 + epoch))
        progress = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{math.ceil(total_steps / steps_per_epoch)}", quiet)
        losses, times, shown_sparsity = [], [], opt.sparsity()[1]
        for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if step >= stop:
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
        row = {"epoch": epoch + 1, "step": step, "phase": _phase(recipe, steps_per_epoch, step),
               "loss": float(np.mean(losses)), "test_acc": _accuracy(runs["pruned"], x_test, y_test),
               "sparsity": opt.sparsity()[1], "ms_per_step": 1e3 * float(np.median(times)),
               "lr": opts["pruned"].param_groups[0]["lr"]}
        if baseline:
            row["dense_acc"] = _accuracy(runs["dense"], x_test, y_test)
        # a row written where max_steps stopped inside this epoch is replaced by the whole epoch's
        history = [r for r in history if r["epoch"] != row["epoch"]] + [row]
        log(_format_row(row, baseline))
        _save_atomic({"model": runs["pruned"].state_dict(), "models": {k: m.state_dict() for k, m in runs.items()},
                      "optimizers": {k: o.state_dict() for k, o in opts.items()},
                      "schedulers": {k: s.state_dict() for k, s in scheds.items()},
                      "epoch": epoch + 1, "step": step, "history": history, "recipe": dataclasses.asdict(recipe)},
                     os.path.join(out_dir, "checkpoint.pt"))
    return _summarize(recipe, runs, opt, history, x_test, y_test, out_dir, baseline, data)


def _weight_sparsity(model):
    zeros = total = 0
    for p in model.parameters():
        if p.dim() >= 2:
            zeros, total = zeros + int((p == 0).sum()), total + p.numel()
    return zeros / total if total else 0.0


def _phase(recipe, steps_per_epoch, step):
    """The schedule's phase at the end of an epoch that ended at ``step``."""
    steps = _schedule_steps(recipe, steps_per_epoch)
    if step <= steps["pretrain_step"]:
        return "dense"
    return "ramp" if step <= steps["pretrain_step"] + steps["sparse_step"] else "fine-tune"


def _number(value, width, digits):
    """A table cell: ``-`` for a missing or non-finite value (a diverged loss), never ``nan``."""
    if value is None or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _format_row(row, baseline):
    text = (f"{row['epoch']:>5} {row['phase']:<9} {_number(row['loss'], 7, 4)} {_number(row['test_acc'], 9, 4)} "
            f"{_number(row['sparsity'], 9, 4)} {_number(row['ms_per_step'], 8, 1)}")
    if baseline and "dense_acc" in row:
        text += f" {_number(row['dense_acc'], 9, 4)}"
    return text


def _strict_json(value):
    """``value`` with every non-finite float replaced by None, so that it is valid JSON (RFC 8259)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _summarize(recipe, runs, opt, history, x_test, y_test, out_dir, baseline, data):
    model = runs["pruned"]
    per_tensor, total = opt.sparsity()
    report = pruning.macs(model, x_test[:1])
    checkpoint = os.path.join(out_dir, "checkpoint.pt")
    final = history[-1]["test_acc"] if history else _accuracy(model, x_test, y_test)
    summary = {
        "recipe": dataclasses.asdict(recipe), "dataset_source": data.source,
        "final_test_acc": final, "best_test_acc": max([final] + [r["test_acc"] for r in history]),
        "sparsity": total, "per_tensor_sparsity": per_tensor,
        "dense_macs": report.dense, "effective_macs": report.effective, "pruning_rate": report.pruning_rate,
        "per_layer_macs": list(report.per_layer),
        "checkpoint_bytes": os.path.getsize(checkpoint) if os.path.exists(checkpoint) else None,
        "model_state_bytes": _state_size(model.state_dict()),
        "sparse_bytes": pruning.save_sparse(model, os.path.join(out_dir, "model.safetensors"))["bytes"],
        "history": history,
    }
    if baseline:
        dense = history[-1]["dense_acc"] if history else _accuracy(runs["dense"], x_test, y_test)
        summary["dense_final_test_acc"] = dense
        summary["dense_best_test_acc"] = max([dense] + [r["dense_acc"] for r in history])
    summary = _strict_json(summary)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    return summary


def plot(summary, path):
    """Accuracy and sparsity against step, as a PNG; returns False (and writes nothing) without epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    history = summary["history"]
    if not history:
        return False
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
    return True
