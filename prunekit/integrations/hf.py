"""Hugging Face ``transformers.Trainer`` with a prunekit optimizer.

Two ways, both saving masks and the step counter in the Trainer's own checkpoints (``optimizer.pt``),
so ``trainer.train(resume_from_checkpoint=...)`` goes on pruning where it stopped:

1. Choose the optimizer by name and let the Trainer build it from its ``TrainingArguments``::

       from prunekit.integrations.hf import PruningTrainer
       trainer = PruningTrainer(model=model, args=args, train_dataset=data, pruning_optimizer="adamw",
                                pruning=dict(target_sparsity=0.5, pretrain_step=100, sparse_step=400))

   ``pruning_optimizer`` is ``"sgd"``, ``"adam"`` or ``"adamw"`` (prunekit's own classes), a
   ``torch.optim.Optimizer`` class, or ``None``: then the Trainer's own choice (``args.optim``, any of
   its names) is built as usual and pruning is attached to it (:func:`prunekit.torch.attach`).
   ``PruningTrainer`` also logs ``sparsity`` with the loss.

2. Build it yourself and pass it through ``optimizers=(optimizer, scheduler)`` to a plain ``Trainer``::

       optimizer = sparse_optimizer(model, "adamw", args, target_sparsity=0.5, sparse_step=400)
       trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))

Both follow the Trainer's defaults: learning rate, Adam betas and epsilon from ``args``, and no weight
decay on biases and normalisation weights. The prune schedule counts optimizer steps, which are the
Trainer's global steps (gradient accumulation included).

This module imports ``transformers`` only when :class:`PruningTrainer` is first used; ``prunekit.torch``
never imports it.
"""

import re

import torch

from prunekit.core.config import PRUNE_ARGUMENTS, PruneConfig
from prunekit.errors import ConfigError, PrunekitTypeError
from prunekit.integrations import unwrap_optimizer

__all__ = ["sparse_optimizer", "PruningTrainer", "OPTIMIZERS"]

#: Names accepted by :func:`sparse_optimizer` and ``PruningTrainer(pruning_optimizer=...)``.
OPTIMIZERS = ("sgd", "adam", "adamw")

# the Trainer's rule (transformers.Trainer.get_decay_parameter_names): no decay on biases and norms
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def _no_decay_names(model):
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(prefix=module_name, recurse=False):
            if isinstance(module, torch.nn.LayerNorm) or _NO_DECAY.search(name.lower()):
                names.add(name)
    return names


def _groups(model, weight_decay):
    no_decay = _no_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n not in no_decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]], named


def _defaults_from(args, name):
    """The base optimizer's arguments a Trainer would take from ``TrainingArguments``."""
    if args is None:
        return {}
    defaults = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    if name in ("adam", "adamw"):
        defaults.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return defaults


def sparse_optimizer(model, name="adamw", args=None, **kwargs):
    """A pruning optimizer for ``model``, with the Trainer's parameter groups.

    Args:
        model: the ``torch.nn.Module`` the Trainer trains (parameter names come from it).
        name: ``"sgd"``, ``"adam"``, ``"adamw"`` (:class:`prunekit.torch.SGDSparse`, ``AdamSparse``,
            ``AdamWSparse``), or any ``torch.optim.Optimizer`` subclass (pruning attached to it).
        args: a ``transformers.TrainingArguments`` (or None): ``learning_rate``, ``weight_decay`` and
            the Adam betas and epsilon are taken from it; explicit keywords win.
        **kwargs: the base optimizer's arguments (``lr``, ``momentum``, ...) and the pruning
            arguments (``target_sparsity``, ``pretrain_step``, ``sparse_step``, ``frequency``, ...).
            ``weight_decay`` applies to every parameter except biases and normalisation weights.

    Returns:
        The optimizer, ready for ``Trainer(..., optimizers=(optimizer, scheduler))``.

    Raises:
        ConfigError: ``name`` is not one of :data:`OPTIMIZERS` nor an optimizer class.

    Example:
        >>> import torch
        >>> from prunekit.integrations.hf import sparse_optimizer
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        >>> opt = sparse_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01, target_sparsity=0.5)
        >>> type(opt).__name__, [g["weight_decay"] for g in opt.param_groups]
        ('AdamWSparse', [0.01, 0.0])
    """
    from prunekit import torch as pruning

    classes = {"sgd": pruning.SGDSparse, "adam": pruning.AdamSparse, "adamw": pruning.AdamWSparse}
    if isinstance(name, str) and name.lower() in classes:
        key, base = name.lower(), None
    elif isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        key, base = None, name
    else:
        raise ConfigError(f"pruning optimizer must be one of {list(OPTIMIZERS)} or a torch.optim.Optimizer "
                          f"class; got {name!r}")
    options = dict(_defaults_from(args, key), **kwargs)
    groups, named = _groups(model, options.pop("weight_decay", 0.0))
    if base is None:
        return classes[key](groups, param_name=named, **options)
    prune_kwargs, base_kwargs = PruneConfig.split_kwargs(options)
    return pruning.attach(base(groups, **base_kwargs), named, **prune_kwargs)


def _check_pruning(pruning):
    if not isinstance(pruning, dict) or not pruning:
        raise PrunekitTypeError("PruningTrainer needs pruning=dict(target_sparsity=..., ...) with the pruning "
                                f"arguments; got {pruning!r}")
    unknown = sorted(set(pruning) - set(PRUNE_ARGUMENTS))
    if unknown:
        raise PrunekitTypeError(f"pruning has unknown arguments {unknown}; accepted: {list(PRUNE_ARGUMENTS)} "
                                "(base optimizer arguments come from TrainingArguments)")
    PruneConfig.from_kwargs(**pruning)  # bad values fail here, before any training


def _make_trainer_class():
    import transformers

    class PruningTrainer(transformers.Trainer):
        """``transformers.Trainer`` that trains with a prunekit optimizer and logs ``sparsity``.

        Args:
            *args, **kwargs: as ``transformers.Trainer``, without ``optimizers`` (use a plain
                ``Trainer`` and :func:`sparse_optimizer` to pass your own).
            pruning: the pruning arguments (``target_sparsity``, ``pretrain_step``, ...).
            pruning_optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``, a ``torch.optim.Optimizer`` class,
                or None for the Trainer's own choice (``args.optim``) with pruning attached.
        """

        def __init__(self, *args, pruning=None, pruning_optimizer=None, **kwargs):
            _check_pruning(pruning)
            if pruning_optimizer is not None and not (isinstance(pruning_optimizer, type)
                                                      or str(pruning_optimizer).lower() in OPTIMIZERS):
                raise ConfigError(f"pruning_optimizer must be None, one of {list(OPTIMIZERS)} or a "
                                  f"torch.optim.Optimizer class; got {pruning_optimizer!r}")
            if kwargs.get("optimizers", (None, None))[0] is not None:
                raise PrunekitTypeError("PruningTrainer builds its optimizer from pruning=...; to pass your own "
                                        "use transformers.Trainer(optimizers=(sparse_optimizer(...), None))")
            self._pruning_args = dict(pruning)
            self._pruning_optimizer = pruning_optimizer
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                model = self.model if model is None else model
                if self._pruning_optimizer is None:
                    from prunekit.torch import attach
                    super().create_optimizer(model)
                    attach(self.optimizer, model.named_parameters(), **self._pruning_args)
                else:
                    self.optimizer = sparse_optimizer(model, self._pruning_optimizer, self.args,
                                                      **self._pruning_args)
            return self.optimizer

        def log(self, logs, *args, **kwargs):
            if self.optimizer is not None and "loss" in logs:
                logs = dict(logs, sparsity=round(unwrap_optimizer(self.optimizer).sparsity()[1], 4))
            super().log(logs, *args, **kwargs)

    PruningTrainer.__module__ = __name__
    return PruningTrainer


def __getattr__(name):
    # PEP 562: the Trainer subclass is made on first use, so importing this module needs no transformers
    if name == "PruningTrainer":
        cls = _make_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
