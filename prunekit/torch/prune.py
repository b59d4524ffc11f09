"""The seed's model-level API: ``Prune(model, ...)`` with ``prune()`` called after ``optimizer.step()``.

Use it when the optimizer cannot be swapped. It shares the engine of the optimizers; the difference
is that it does not own the optimizer's state, so pass ``optimizer=`` to have momentum and Adam
moments of pruned entries zeroed at prune events (without it they keep accumulating, harmlessly for
element-wise optimizers, since ``prune()`` zeroes the weights again after every step).
"""

import copy

from prunekit.core.config import PruneConfig
from prunekit.core.patterns import BankBalanced, Unstructured
from prunekit.errors import ConfigError
from prunekit.torch.engine import STATE_KEY, PruningEngine

__all__ = ["Prune"]


class Prune:
    """Prune a model's parameters on a schedule, driven by calls to :meth:`prune`.

    Args:
        model: the ``torch.nn.Module``.
        pretrain_step, sparse_step, frequency: the schedule (SPEC.md).
        prune_dict: ``{parameter name or glob: target sparsity}``; only these are pruned. ``None``
            prunes every default-prunable parameter to ``target_sparsity`` (a keyword argument).
        restore_sparsity, fix_sparsity: as for the optimizers.
        balance: ``'none'`` (unstructured) or ``'fix'`` (bank-balanced, ``bank_size`` per bank).
        prune_device: only ``None``/``'default'``: masks are computed on each parameter's device.
        optimizer: optional; its state of pruned entries is zeroed at prune events.
        bank_size: bank size for ``balance='fix'`` (64 in the seed's figure).
        **prune_args: any other pruning argument (``exponent``, ``init_sparsity``, ``pattern``, ...).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8))
        >>> pruner = Prune(model, prune_dict={'0.weight': 0.5})
        >>> pruner.prune()
        >>> pruner.sparsity()
        ({'0.weight': 0.5}, 0.5)
    """

    def __init__(self, model, pretrain_step=0, sparse_step=0, frequency=100, prune_dict=None,
                 restore_sparsity=False, fix_sparsity=False, balance="none", prune_device=None, *,
                 optimizer=None, bank_size=64, **prune_args):
        if balance not in ("none", "fix"):
            raise ConfigError(f"balance must be 'none' or 'fix'; got {balance!r}")
        if prune_device not in (None, "default"):
            raise ConfigError(f"prune_device={prune_device!r} is not supported: prunekit computes masks on each "
                              "parameter's own device (leave prune_device unset)")
        if "pattern" not in prune_args and "sparse_block" not in prune_args:
            prune_args["pattern"] = BankBalanced(bank_size) if balance == "fix" else Unstructured()
        if prune_dict is not None:
            if not isinstance(prune_dict, dict) or not prune_dict:
                raise ConfigError(f"prune_dict must be a non-empty dict of name -> sparsity; got {prune_dict!r}")
            if prune_args.get("target_sparsity"):
                raise ConfigError("pass targets either in prune_dict or as target_sparsity, not both")
            prune_args.setdefault("target_sparsity", 0.0)
            prune_args["special_sparsity_dict"] = prune_dict
        config = PruneConfig.from_kwargs(pretrain_step=pretrain_step, sparse_step=sparse_step, frequency=frequency,
                                         restore_sparsity=restore_sparsity, fix_sparsity=fix_sparsity, **prune_args)
        self.state = {}
        self.engine = PruningEngine(list(model.named_parameters()), config, owner=self, optimizer=optimizer)

    @property
    def plan(self):
        return self.engine.plan

    def prune(self):
        """Count one optimizer step; at a prune event recompute masks; leave pruned weights at 0.0."""
        if not self.engine.active:
            return
        self.engine.before_update()
        self.engine.after_update()

    def sparsity(self):
        """``(per_tensor, total)`` measured on the weights, as the seed's ``Prune.sparsity()``."""
        return self.engine.sparsity()

    def state_dict(self):
        return copy.copy(self.state.get(STATE_KEY, {"step": 0, "masks": {}, "restored": {}}))

    def load_state_dict(self, state):
        self.state[STATE_KEY] = dict(state)
        self.engine.check_loaded_state()
