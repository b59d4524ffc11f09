"""prunekit inside Hugging Face's Trainer, Lightning and Accelerate (prunekit[integrations]).

Each trainer trains a small model offline (built from a config, random weights) to its target sparsity,
saves a checkpoint its own way in the middle of the ramp, resumes from it, and must end with the same
masks and weights as a run that never stopped. The masks are read through the public API
(``pruning.masks``), which does not depend on where the optimizer keeps them.
"""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")

# nothing here may reach the network: models come from configs, data is made here
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import prunekit.torch as pruning  # noqa: E402
from prunekit.errors import ConfigError, PrunekitTypeError  # noqa: E402
from prunekit.integrations import unwrap_optimizer  # noqa: E402


def _needs(package):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} is not installed (pip install prunekit[integrations])")


PRUNE = dict(target_sparsity=0.5, pretrain_step=2, sparse_step=8, frequency=2)  # last event at step 10


def _masks(optimizer):
    return {n: m.detach().cpu().clone() for n, m in unwrap_optimizer(optimizer).pruning.masks.items()}


def _weights(model):
    return {n: p.detach().cpu().clone() for n, p in model.state_dict().items()}


def _assert_same(a, b, what):
    assert a.keys() == b.keys() and a, what
    for name in a:
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs"


def _assert_at_target(optimizer, target=PRUNE["target_sparsity"]):
    per_tensor, _ = unwrap_optimizer(optimizer).sparsity()
    assert per_tensor and all(abs(s - target) < 1e-6 for s in per_tensor.values()), per_tensor


# -- Hugging Face transformers.Trainer -------------------------------------------------------------

def _bert():
    import transformers
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _sentences(n=48, length=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (n, length), generator=g)
    labels = (ids[:, 0] > 20).long()
    return [{"input_ids": i, "attention_mask": torch.ones(length, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)]


def _hf_args(out, save=True):
    import transformers
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=14, per_device_train_batch_size=8, learning_rate=2e-3, weight_decay=0.01,
        save_strategy="steps" if save else "no", save_steps=5, logging_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, seed=0)


def _hf_trainer(out, how, save=True):
    import transformers
    from prunekit.integrations.hf import PruningTrainer, sparse_optimizer
    model, args = _bert(), _hf_args(out, save)
    if how == "optimizers":
        optimizer = sparse_optimizer(model, "adamw", args, **PRUNE)
        return transformers.Trainer(model=model, args=args, train_dataset=_sentences(), optimizers=(optimizer, None))
    return PruningTrainer(model=model, args=args, train_dataset=_sentences(), pruning=PRUNE,
                          pruning_optimizer=None if how == "args.optim" else how)


@_needs("transformers")
@pytest.mark.parametrize("how", ["optimizers", "args.optim"])
def test_hf_trainer_resume_equals_uninterrupted(tmp_path, how):
    full = _hf_trainer(tmp_path, how)
    full.train()
    assert isinstance(unwrap_optimizer(full.optimizer), pruning.SparseOptimizerMixin)
    _assert_at_target(full.optimizer)
    if how == "args.optim":  # the Trainer's own optimizer (args.optim), pruning attached to it
        assert "AdamW" in type(unwrap_optimizer(full.optimizer)).__name__
    resumed = _hf_trainer(tmp_path / "resumed", how, save=False)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))  # stopped mid-ramp
    _assert_same(_masks(full.optimizer), _masks(resumed.optimizer), "masks")
    _assert_same(_weights(full.model), _weights(resumed.model), "weights")


@_needs("transformers")
def test_hf_pruning_trainer_logs_sparsity_and_checks_arguments(tmp_path):
    import transformers
    from prunekit.integrations.hf import PruningTrainer
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8,
                                          logging_steps=12, save_strategy="no", report_to=[], disable_tqdm=True,
                                          use_cpu=True)
    trainer = PruningTrainer(model=_bert(), args=args, train_dataset=_sentences(), pruning=PRUNE,
                             pruning_optimizer="adam")
    trainer.train()
    logged = [row["sparsity"] for row in trainer.state.log_history if "sparsity" in row]
    assert logged and logged[-1] == round(unwrap_optimizer(trainer.optimizer).sparsity()[1], 4) > 0.4
    with pytest.raises(ConfigError, match="'lamb'"):
        PruningTrainer(model=_bert(), args=args, pruning=PRUNE, pruning_optimizer="lamb")
    with pytest.raises(PrunekitTypeError, match="'target_sparsty'"):
        PruningTrainer(model=_bert(), args=args, pruning={"target_sparsty": 0.5})
    with pytest.raises(ConfigError, match="target_sparsity"):
        PruningTrainer(model=_bert(), args=args, pruning={"target_sparsity": 1.5})


def test_hf_sparse_optimizer_groups_and_names():
    from prunekit.integrations.hf import sparse_optimizer
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = sparse_optimizer(model, torch.optim.RMSprop, lr=0.01, weight_decay=0.1, target_sparsity=0.5)
    assert type(opt).__name__ == "RMSpropSparse"
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [2, 2] and len(plain["params"]) == 4  # biases and the norm
    assert opt.plan.names == ["0.weight", "2.weight"]
    with pytest.raises(ConfigError, match="got 'sgdm'"):
        sparse_optimizer(model, "sgdm", target_sparsity=0.5)


# -- Lightning -------------------------------------------------------------------------------------

if importlib.util.find_spec("lightning") is not None:
    import lightning.pytorch as pl

    class _Classifier(pl.LightningModule):  # at module level, as DDP launchers need
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return pruning.SGDSparse(self.named_parameters(), lr=0.1, momentum=0.9, **PRUNE)

    class _SaveEachRank(pl.Callback):
        """Each DDP rank writes its masks and weights at the end of training."""

        def __init__(self, out):
            self.out = out

        def on_train_end(self, trainer, pl_module):
            torch.save({"masks": _masks(trainer.optimizers[0]), "weights": _weights(pl_module)},
                       os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


def _lightning_data(n=32):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 12, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False, num_workers=0)


def _lightning_fit(out, ckpt_path=None):
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=str(out), filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[every_epoch])
    module = _Classifier()
    trainer.fit(module, _lightning_data(), ckpt_path=ckpt_path)  # 4 steps an epoch
    return trainer, module


@_needs("lightning")
def test_lightning_checkpoint_resume_equals_uninterrupted(tmp_path):
    full, full_module = _lightning_fit(tmp_path)
    assert full.global_step == 16
    _assert_at_target(full.optimizers[0])
    checkpoint = tmp_path / "epoch=1.ckpt"  # after 8 steps: mid-ramp, masks already there
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    # the model's own parameter names, no weight_orig/weight_mask (ModelPruning's reparametrisation)
    assert sorted(saved["state_dict"]) == sorted(full_module.state_dict())
    resumed, resumed_module = _lightning_fit(tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert resumed.global_step == 16
    _assert_same(_masks(full.optimizers[0]), _masks(resumed.optimizers[0]), "masks")
    _assert_same(_weights(full_module), _weights(resumed_module), "weights")


@_needs("lightning")
def test_lightning_ddp_ranks_agree_and_checkpoint_keeps_masks(tmp_path):
    """Two gloo ranks (ddp_fork) see different batches: one mask set, one model, and a checkpoint that
    holds the masks (ModelPruning re-registers weights after DDP has wrapped them and strips its masks
    from checkpoints; prunekit touches neither the module nor its state_dict)."""
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[_SaveEachRank(str(tmp_path))])
    trainer.fit(_Classifier(), _lightning_data(n=64))  # 4 steps an epoch on each rank
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _assert_same(r0["masks"], r1["masks"], "masks of rank 0 and 1")
    _assert_same(r0["weights"], r1["weights"], "weights of rank 0 and 1")
    sparsity = {n: 1 - float(m.float().mean()) for n, m in r0["masks"].items()}
    assert all(abs(s - 0.5) < 1e-6 for s in sparsity.values()), sparsity


# -- Accelerate ------------------------------------------------------------------------------------

def _accelerate_run(out, stop_after=None, resume_after=None, steps=14):
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = pruning.AdamWSparse(model.named_parameters(), lr=1e-2, weight_decay=0.01, **PRUNE)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8 * steps, 12, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False, num_workers=0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    batches, done = loader, 0
    if resume_after is not None:
        accelerator.load_state(str(out))
        done = resume_after
        batches = accelerator.skip_first_batches(loader, done)
    for step, (xb, yb) in enumerate(batches, start=done):
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.cross_entropy(model(xb), yb))
        optimizer.step()
        scheduler.step()
        if stop_after is not None and step + 1 == stop_after:
            accelerator.save_state(str(out))
            break
    return accelerator.unwrap_model(model), optimizer


@_needs("accelerate")
def test_accelerate_save_load_state_resume_equals_uninterrupted(tmp_path):
    full_model, full_opt = _accelerate_run(tmp_path / "unused")
    _assert_at_target(full_opt)
    _accelerate_run(tmp_path / "state", stop_after=5)  # mid-ramp
    resumed_model, resumed_opt = _accelerate_run(tmp_path / "state", resume_after=5)
    _assert_at_target(resumed_opt)
    _assert_same(_masks(full_opt), _masks(resumed_opt), "masks")
    _assert_same(_weights(full_model), _weights(resumed_model), "weights")


# -- the examples ----------------------------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "integrations")


def _example(script):
    spec = importlib.util.spec_from_file_location(f"_example_{script[:-3]}", os.path.join(EXAMPLES, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("script, package, first, second, final", [
    ("hf_trainer.py", "transformers", ["--steps", "12", "--stop-at", "6"], ["--steps", "12", "--resume"],
     "step 12: sparsity 0.5000"),
    ("lightning_module.py", "lightning", ["--epochs", "2"], ["--epochs", "5", "--resume"], "step 80: sparsity 0.8"),
    ("accelerate_loop.py", "accelerate", ["--steps", "16", "--stop-at", "8"], ["--steps", "16", "--resume"],
     "step 16: sparsity 0.8997"),
])
def test_examples_stop_and_resume(tmp_path, capsys, script, package, first, second, final):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install prunekit[integrations])")
    main = _example(script)
    main(["--out", str(tmp_path), *first])
    main(["--out", str(tmp_path), *second])
    assert final in capsys.readouterr().out


def test_gpt_example_prunes_to_2_of_4_and_counts_macs(tmp_path, capsys):
    """The transformer example in a tiny configuration, on a small fortune-style file made here."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install prunekit[integrations])")
    corpus = tmp_path / "fortunes"
    corpus.write_text("\n%\n".join(f"Fortune {i}: the quick brown fox jumps over {i % 7} lazy dogs."
                                   for i in range(200)))
    main = _example("gpt_prune.py")
    main(["--corpus", str(corpus), "--out", str(tmp_path / "runs"), "--steps", "4", "--batch-size", "4",
          "--context", "16", "--hidden", "16", "--layers", "1", "--heads", "2", "--eval-windows", "4",
          "--patterns", "dense,2:4"])
    table = capsys.readouterr().out.split("pattern")[-1].splitlines()
    dense, nm = table[1].split(), table[2].split()
    assert dense[0] == "dense" and nm[0] == "2:4" and nm[1] == "0.5000"
    assert dense[4] == dense[5] == nm[4] and int(nm[5].replace(",", "")) * 2 == int(nm[4].replace(",", ""))
