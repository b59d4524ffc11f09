"""TensorFlow v1-API adapter: ``import prunekit.tf1 as pruning``.

The seed wrote ``from optimizers import tensorflow1_pruning as pruning``; the names are the same:
``MomentumOptimizerSparse``, ``AdamOptimizerSparse``.
"""

from prunekit.core.patterns import NM, BankBalanced, Block, Global, Unstructured
from prunekit.tf1.optimizers import AdamOptimizerSparse, MomentumOptimizerSparse

__all__ = ["MomentumOptimizerSparse", "AdamOptimizerSparse", "Unstructured", "Global", "BankBalanced", "NM", "Block"]
