"""Shared inputs of the framework checks: integer-valued weights (many ties) and the patterns."""

import numpy as np

PATTERNS = ["unstructured", "bank4", "2:4", "block2x2"]
# canonical (out, in, *spatial) shapes: a conv and a dense kernel
SHAPES = {"conv": (8, 4, 3, 3), "dense": (6, 16)}


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.integers(-3, 4, size=s).astype(np.float32) for k, s in SHAPES.items()}


def target(pattern):
    return None if ":" in pattern else 0.6
