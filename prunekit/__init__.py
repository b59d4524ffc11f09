"""prunekit: train sparse neural networks by swapping your optimizer.

``import prunekit`` imports no deep-learning framework. Pick the adapter of yours::

    import prunekit.torch as pruning
    optimizer = pruning.SGDSparse(model.parameters(), lr=0.1, momentum=0.9,
                                  param_name=model.named_parameters(),
                                  target_sparsity=0.9, pretrain_step=1000, sparse_step=5000, frequency=100)
"""

from prunekit.errors import ConfigError, PlanError, PrunekitError, PrunekitTypeError, PruningRuntimeError

__version__ = "0.1.0"
__all__ = ["ConfigError", "PlanError", "PrunekitError", "PrunekitTypeError", "PruningRuntimeError", "__version__"]
