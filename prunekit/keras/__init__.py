"""Keras 3 adapter: ``import prunekit.keras as pruning``; ``pruning.SGDSparse``, ``pruning.AdamSparse``.

Backends: TensorFlow and PyTorch (set ``KERAS_BACKEND`` before importing keras).
"""

from prunekit.core.patterns import NM, BankBalanced, Block, Global, Unstructured
from prunekit.keras.optimizers import AdamSparse, SGDSparse
import prunekit.ir.keras_layers  # noqa: E402,F401  (.keras files from ir.to_keras / convert then load here too)

__all__ = ["SGDSparse", "AdamSparse", "Unstructured", "Global", "BankBalanced", "NM", "Block"]
