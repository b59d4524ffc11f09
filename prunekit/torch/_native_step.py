"""The default update of ``SGDSparse``, ``AdamSparse`` and ``AdamWSparse`` on CPU: one native pass per tensor.

torch's CPU SGD makes three passes over each tensor (momentum: multiply, add; weights: add) and its Adam
five, and its vectorised ``sqrt`` is several times slower on exact zeros than on other numbers (measured
here: 11.9 vs 1.6 ms for 2.4M floats, 90% zeros); a pruned tensor's second moments are mostly exact zeros,
so a 90%-sparse AdamSparse step ran at ~1.8x of Adam. The native kernels (``pk_sgd``, ``pk_adam`` in
``prunekit/core/_native/select.c``) do the same arithmetic in one pass, with the mask: pruned weights and
state come out +0.0 whatever went in. That is also what lets a prune event leave its newly pruned entries
to the update right after it (see ``PruningEngine.masked_update``), instead of a zeroing pass of its own.

Where it does not apply (another device or dtype, ``fused``, ``differentiable``, Adam's ``amsgrad`` and
``capturable``, tensor hyper-parameters, sparse gradients, a parameter's first step (its state is made by
torch), two parameters sharing one storage, a GradScaler that unscales inside the optimizer, no AVX2/FMA or
no C compiler) the step is torch's own, for every parameter of that step. SGD's results equal torch's
single-tensor SGD bit for bit where torch dispatches to its AVX2 or AVX-512 kernels (its add-with-alpha is
then a fused multiply-add, as the kernel's is; with ``ATEN_CPU_CAPABILITY=default`` they differ by float32
rounding); Adam's equal torch's single-tensor Adam to float32 rounding
(torch fuses some multiply-adds; this kernel rounds each operation): see ``tests/test_torch_contracts.py``.
"""

import torch

from prunekit.core import native

__all__ = ["NativeSGDStep", "NativeAdamStep", "native_step_for"]


def _plain(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_cpu(p):
    """A dense float32 CPU parameter with a dense float32 gradient, both contiguous (not a tensor subclass
    such as FSDP2's DTensor)."""
    return (p.device.type == "cpu" and p.dtype == torch.float32 and type(p) in (torch.nn.Parameter, torch.Tensor)
            and not p.grad.is_sparse and p.grad.dtype == p.dtype and p.grad.device == p.device
            and p.is_contiguous() and p.grad.is_contiguous())


class _NativeStep:
    """Plans a whole step natively (:meth:`plan`) and runs it (:meth:`run`), or reports that it cannot."""

    def __init__(self):
        self.steps = 0  # steps that took the native path

    def plan(self, optimizer):
        """Per parameter that steps, what :meth:`run` needs; None when the step must be torch's."""
        if native.kernels() is None:
            return None
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return None
        work, storages = [], set()
        for group in optimizer.param_groups:
            if group.get("fused") or group.get("differentiable") or not self._group_ok(group):
                return None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not _plain_cpu(p):
                    return None
                storage = p.untyped_storage().data_ptr()
                if storage in storages:  # two parameters on one storage: torch updates them one after the other
                    return None
                storages.add(storage)
                item = self._item(optimizer, group, p)
                if item is None:
                    return None
                work.append(item)
        return work

    @torch.no_grad()
    def run(self, optimizer, work, masks, zero_grads=()):
        """The step of ``work`` (from :meth:`plan`, made before any change to the state since), each tensor
        with its mask from ``masks`` (``{param: bool tensor}``; None: unmasked); the gradients of the
        parameters in ``zero_grads`` get +0.0 where their masks prune. Every array written is known to
        autograd as changed in place."""
        arrays, hyper = [], []
        for item in work:
            p = item[0]
            mask = masks.get(p)
            if mask is not None:
                mask = mask.contiguous().view(torch.uint8).numpy()
            a, h = self._arrays(item)
            arrays.append((*a, mask, p in zero_grads))
            hyper.append(h)
        self._kernel(arrays, hyper, threads=torch.get_num_threads())
        bump = torch.autograd.graph.increment_version
        for item in work:
            p = item[0]
            bump(p)
            if p in zero_grads and masks.get(p) is not None:
                bump(p.grad)
        self.steps += 1


class NativeSGDStep(_NativeStep):
    """``torch.optim.SGD``'s step natively (see the module doc)."""

    _kernel = staticmethod(native.sgd_steps)

    @staticmethod
    def _group_ok(group):
        return all(_plain(group[k]) for k in ("lr", "momentum", "dampening", "weight_decay"))

    @staticmethod
    def _item(optimizer, group, p):
        # a buffer made while momentum was on stays when a schedule takes momentum to 0: it is masked then
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is None and group["momentum"] != 0:  # its first step: torch makes the buffer (a copy of the gradient)
            return None
        if buf is not None and not (torch.is_tensor(buf) and buf.dtype == p.dtype and buf.device == p.device
                                    and buf.is_contiguous() and buf.shape == p.shape):
            return None
        return (p, buf, group)

    @staticmethod
    def _arrays(item):
        p, buf, group = item
        return ((p.detach().numpy(), p.grad.numpy(), None if buf is None else buf.numpy()),
                {"weight_decay": float(group["weight_decay"]), "momentum": float(group["momentum"]),
                 "dampening": float(group["dampening"]), "lr": float(group["lr"]),
                 "nesterov": bool(group["nesterov"]), "maximize": bool(group["maximize"])})


class NativeAdamStep(_NativeStep):
    """``torch.optim.Adam`` / ``AdamW``'s step natively (see the module doc)."""

    _kernel = staticmethod(native.adam_steps)

    @staticmethod
    def _group_ok(group):
        return (not group.get("amsgrad") and not group.get("capturable")
                and all(_plain(group[k]) for k in ("lr", "eps", "weight_decay"))
                and all(_plain(b) for b in group["betas"]))

    @staticmethod
    def _item(optimizer, group, p):
        state = optimizer.state.get(p)
        if (not state or "exp_avg" not in state or not torch.is_tensor(state.get("step"))
                or state["step"].device.type != "cpu"):
            return None  # its first step: torch makes the state
        if not all(t.dtype == p.dtype and t.device == p.device and t.is_contiguous() and t.shape == p.shape
                   for t in (state["exp_avg"], state["exp_avg_sq"])):
            return None
        return (p, state, group)

    @staticmethod
    def _arrays(item):
        p, state, group = item
        beta1, beta2 = group["betas"]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        decoupled = group.get("decoupled_weight_decay", False)
        state["step"] += 1
        step = float(state["step"])
        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
        return ((p.detach().numpy(), p.grad.numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()),
                {"decay_mul": 1 - lr * wd if decoupled and wd != 0 else 1.0, "l2": wd if not decoupled else 0.0,
                 "beta1": beta1, "beta2": beta2, "neg_step": -(lr / bias1), "bc2_sqrt": bias2 ** 0.5,
                 "eps": float(group["eps"]), "maximize": bool(group["maximize"])})


def native_step_for(optimizer):
    """The native step of a prunekit optimizer's family, or None (an :func:`attach`-ed optimizer)."""
    if isinstance(optimizer, torch.optim.SGD):
        return NativeSGDStep()
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return NativeAdamStep()
    return None
