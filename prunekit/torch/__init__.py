"""PyTorch adapter: ``import prunekit.torch as pruning``.

The seed wrote ``from optimizers import pytorch_pruning as pruning``; the names are the same::

    optimizer = pruning.SGDSparse(model.parameters(), lr=0.1, momentum=0.9,
                                  param_name=model.named_parameters(), target_sparsity=0.95,
                                  pretrain_step=1000, sparse_step=4000, frequency=100)
"""

from prunekit.core.patterns import ERK, NM, BankBalanced, Block, Global, Unstructured
from prunekit.torch.engine import PruningEngine
from prunekit.torch.inference import sparsify_for_inference
from prunekit.torch.report import MacsReport, macs
from prunekit.torch.optimizers import AdamSparse, AdamWSparse, SGDSparse, SparseOptimizerMixin, attach
from prunekit.torch.prune import Prune
from prunekit.torch.sparse_io import load_sparse, save_sparse, strip

__all__ = ["SGDSparse", "AdamSparse", "AdamWSparse", "attach", "Prune", "macs", "MacsReport", "PruningEngine",
           "SparseOptimizerMixin", "save_sparse", "load_sparse", "strip", "sparsify_for_inference", "Unstructured", "Global", "ERK", "BankBalanced", "NM", "Block"]
