"""prunekit inside the trainers people use: Hugging Face ``Trainer``, Lightning, Accelerate.

Lightning and Accelerate need no glue: a prunekit optimizer is a ``torch.optim.Optimizer`` whose masks
and step counter are optimizer state, so ``configure_optimizers``, ``accelerator.prepare`` and both
trainers' checkpoints carry them. Hugging Face's ``Trainer`` builds its own optimizer, so
:mod:`prunekit.integrations.hf` chooses a pruning one by name (``pip install prunekit[integrations]``).
None of these packages is imported here; ``prunekit.core`` and ``prunekit.torch`` never import them.
"""

__all__ = ["unwrap_optimizer"]


def unwrap_optimizer(optimizer):
    """The prunekit optimizer inside a trainer's wrapper (Accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``), to call ``sparsity()`` or read ``pruning.masks``.

    Args:
        optimizer: a prunekit optimizer, or a wrapper holding one as ``.optimizer`` or ``._optimizer``.

    Returns:
        The innermost optimizer that prunes.

    Raises:
        PrunekitTypeError: no prunekit optimizer is found inside ``optimizer``.

    Example:
        >>> import torch, prunekit.torch as pruning
        >>> from prunekit.integrations import unwrap_optimizer
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = pruning.SGDSparse(model.named_parameters(), lr=0.1, target_sparsity=0.5)
        >>> unwrap_optimizer(opt) is opt
        True
    """
    from prunekit.errors import PrunekitTypeError
    from prunekit.torch.optimizers import SparseOptimizerMixin

    seen, current = [type(optimizer).__name__], optimizer
    while len(seen) < 8:  # wrappers nest a few levels at most
        inner = getattr(current, "optimizer", None)
        if inner is None or inner is current:
            break
        current = inner
        seen.append(type(current).__name__)
    if not isinstance(current, SparseOptimizerMixin):
        raise PrunekitTypeError(f"no prunekit optimizer inside {' -> '.join(seen)}; build it with "
                                "prunekit.torch (SGDSparse, AdamWSparse, ...) or prunekit.torch.attach")
    return current
