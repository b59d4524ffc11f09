"""MXNet Gluon adapter: ``import prunekit.mxnet as pruning``; ``NAGSparse``, ``NadamSparse``, ``SGDSparse``
(also registered as ``'nagsparse'``, ``'nadamsparse'``, ``'sgdsparse'`` for ``gluon.Trainer``)."""

from prunekit.core.patterns import NM, BankBalanced, Block, Unstructured
from prunekit.mxnet.optimizers import NadamSparse, NAGSparse, SGDSparse

__all__ = ["NAGSparse", "NadamSparse", "SGDSparse", "Unstructured", "BankBalanced", "NM", "Block"]
