"""An opt-in compiled step for ``SGDSparse(..., compile_step=True)``: the update and the mask in one kernel.

Eager PyTorch cannot zero the pruned entries without one more pass over the parameters, which costs
about a third of an SGD step on a CPU (``benchmarks/mask_kernels.py``). Here torch's own functional
``torch.optim.sgd.sgd`` (so every SGD option keeps torch's math) and the mask multiply are compiled
together with ``torch.compile``; inductor fuses them. The learning rate goes in as a 0-d tensor kept
in step with ``group["lr"]``, so LR schedulers do not trigger recompiles.

A step falls back to the eager path (base ``step()`` then masking) whenever the compiled one does not
apply: before the first momentum buffers exist, with sparse or missing gradients, ``differentiable``
or ``fused`` groups, or tensors without masks yet. Compiling takes seconds to tens of seconds and
needs a C++ toolchain for inductor on CPU.
"""

import torch
from torch.optim.sgd import sgd as _functional_sgd

__all__ = ["CompiledSGDStep"]


def _masked_sgd(params, grads, bufs, masks, lr, weight_decay, momentum, dampening, nesterov, maximize):
    _functional_sgd(params, grads, bufs, weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=dampening,
                    nesterov=nesterov, maximize=maximize, foreach=True)
    torch._foreach_mul_(params, masks)


class CompiledSGDStep:
    """Runs one SGD step for an ``SGDSparse`` optimizer, fused with its masks; see the module doc."""

    def __init__(self):
        self._fn = torch.compile(_masked_sgd, dynamic=False)
        self._lr = {}
        self.fused_steps = 0  # steps that took the compiled path

    def _lr_tensor(self, index, group, device):
        lr = group["lr"]
        if torch.is_tensor(lr):
            return lr
        t = self._lr.get((index, device))
        if t is None:
            t = self._lr[(index, device)] = torch.tensor(0.0, dtype=torch.float32, device=device)
        t.fill_(lr)
        return t

    def _split(self, optimizer, group, masks):
        fused, eager = ([], [], [], []), ([], [], [])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                return None
            buf = optimizer.state[p].get("momentum_buffer") if group["momentum"] != 0 else None
            if group["momentum"] != 0 and buf is None:
                return None  # torch's first step clones the gradient into the buffer: leave it to eager
            mask = masks.get(p)
            target = fused if mask is not None else eager
            target[0].append(p)
            target[1].append(p.grad)
            target[2].append(buf)
            if mask is not None:
                fused[3].append(mask)
        return fused, eager

    @torch.no_grad()
    def __call__(self, optimizer, masks):
        """Step every group; False (nothing done) when a group needs the eager path."""
        plans = []
        for index, group in enumerate(optimizer.param_groups):
            if group.get("differentiable") or group.get("fused"):
                return False
            split = self._split(optimizer, group, masks)
            if split is None:
                return False
            plans.append((index, group, split))
        for index, group, (fused, eager) in plans:
            hyper = dict(weight_decay=group["weight_decay"], momentum=group["momentum"], dampening=group["dampening"],
                         nesterov=group["nesterov"], maximize=group["maximize"])
            if fused[0]:
                self._fn(*fused, self._lr_tensor(index, group, fused[0][0].device), **hyper)
            if eager[0]:
                _functional_sgd(*eager, lr=group["lr"], foreach=group["foreach"], **hyper)
        self.fused_steps += 1
        return True
