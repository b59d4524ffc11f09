"""The framework-neutral core: numpy and the standard library only.

It decides *what* to prune and *when*; adapters (``prunekit.torch``, ...) apply the decisions.
"""

from prunekit.core.config import DEFAULT_KEYWORDS, PRUNE_ARGUMENTS, PruneConfig
from prunekit.core.masks import prune_count, reference_global_masks, reference_mask
from prunekit.core.patterns import ERK, NM, BankBalanced, Block, Global, Layout, Pattern, Unstructured, parse_pattern
from prunekit.core.plan import Plan, TensorSpec, resolve_plan
from prunekit.core.schedule import Schedule

__all__ = ["DEFAULT_KEYWORDS", "PRUNE_ARGUMENTS", "PruneConfig", "prune_count", "reference_mask",
           "reference_global_masks", "NM", "BankBalanced", "Block", "Global", "ERK", "Layout", "Pattern",
           "Unstructured", "parse_pattern", "Plan", "TensorSpec", "resolve_plan", "Schedule"]
