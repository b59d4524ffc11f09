"""Dense and effective multiply-accumulates of a model's convolutions and linear layers.

Only the weight products count (no bias, normalisation or activation). A layer's effective MACs are
its dense MACs times its weight density, the compute a sparse kernel that skips zeros would do; the
seed's "pruning rate" is ``1 - effective / dense``.
"""

from dataclasses import dataclass

import torch

__all__ = ["macs", "MacsReport"]

_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
           torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


@dataclass(frozen=True)
class MacsReport:
    """``dense`` and ``effective`` MACs in total and ``per_layer`` (name, type, dense, effective, density)."""

    dense: int
    effective: float
    per_layer: tuple

    @property
    def pruning_rate(self):
        return 1.0 - self.effective / self.dense if self.dense else 0.0

    def __str__(self):
        lines = [f"{'layer':<28} {'type':<16} {'dense MACs':>14} {'effective':>14} {'density':>8}"]
        for row in self.per_layer:
            lines.append(f"{row['name']:<28} {row['type']:<16} {row['dense']:>14,} {row['effective']:>14,.0f} "
                         f"{row['density']:>8.4f}")
        lines.append(f"{'total':<45} {self.dense:>14,} {self.effective:>14,.0f}   "
                     f"pruning rate {self.pruning_rate:.4f}")
        return "\n".join(lines)


def _layer_macs(module, inputs, output):
    w = module.weight
    if isinstance(module, torch.nn.Linear):
        return output.numel() // module.out_features * module.out_features * module.in_features
    kernel = 1
    for k in w.shape[2:]:
        kernel *= k
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        return x.numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


@torch.no_grad()
def macs(model, example_input):
    """Run ``model(example_input)`` once in eval mode and count conv/linear MACs.

    Args:
        model: a ``torch.nn.Module``.
        example_input: a tensor, or a tuple of positional inputs.

    Returns:
        :class:`MacsReport`.

    Example:
        >>> m = torch.nn.Linear(4, 2, bias=False)
        >>> with torch.no_grad(): m.weight[0] = 0
        >>> r = macs(m, torch.randn(3, 4)); (r.dense, r.effective, r.pruning_rate)
        (24, 12.0, 0.5)
    """
    rows, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            def hook(mod, inputs, output, name=name):
                dense = int(_layer_macs(mod, inputs, output))
                density = float((mod.weight != 0).sum()) / mod.weight.numel()
                rows.append({"name": name, "type": type(mod).__name__, "dense": dense,
                             "effective": dense * density, "density": density})
            hooks.append(module.register_forward_hook(hook))
    training = model.training
    model.eval()
    try:
        model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return MacsReport(sum(r["dense"] for r in rows), sum(r["effective"] for r in rows), tuple(rows))


def checkpoint_report(checkpoint, path=None):
    """Per-tensor sparsity, sizes and (for a recipe checkpoint) MACs of a loaded checkpoint dict."""
    import io
    import os
    state = checkpoint["model"]
    rows, zeros, total = [], 0, 0
    for name, tensor in state.items():
        if not torch.is_tensor(tensor) or tensor.dim() < 2 or not tensor.is_floating_point():
            continue
        z = int((tensor == 0).sum())
        rows.append({"name": name, "shape": list(tensor.shape), "sparsity": z / tensor.numel()})
        zeros, total = zeros + z, total + tensor.numel()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    import tempfile
    from prunekit.torch.sparse_io import save_sparse
    with tempfile.TemporaryDirectory() as tmp:
        compressed = save_sparse(state, os.path.join(tmp, "model.safetensors"))["bytes"]
    report = {"tensors": rows, "sparsity": zeros / total if total else 0.0, "model_state_bytes": buffer.tell(),
              "compressed_bytes": compressed,
              "file_bytes": os.path.getsize(path) if path else None, "epoch": checkpoint.get("epoch"),
              "recipe": checkpoint.get("recipe")}
    recipe = checkpoint.get("recipe")
    if recipe:
        from prunekit.torch.models import build_model
        model = build_model(recipe["model"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            from prunekit.errors import ConfigError
            raise ConfigError(f"the weights in {path or 'the checkpoint'!r} do not fit its recipe's model "
                              f"{recipe['model']!r}: {' '.join(str(e).split())[:300]}") from None
        size = 8 if recipe["dataset"] == "digits" else 28
        m = macs(model, torch.zeros(1, 1, size, size))
        report["macs"] = {"dense": m.dense, "effective": m.effective, "pruning_rate": m.pruning_rate}
    return report
