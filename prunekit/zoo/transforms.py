"""The preprocessing of a zoo entry: uint8 images ``(N, C, H, W)`` -> the model's input.

Like torchvision's ``weights.transforms()``: scale to [0, 1], match the channels, resize (bilinear,
``align_corners=False``, no antialiasing: torch's ``interpolate``), normalise. It takes numpy arrays
(and returns numpy, so ONNX Runtime can run the result) or torch tensors (and returns torch).
A float batch is taken as already in [0, 1].
"""

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["Transform"]

_LUMA = (0.299, 0.587, 0.114)


def _resize_axis(x, axis, size):
    """Bilinear resampling of one axis, as torch's ``interpolate(align_corners=False)``."""
    n = x.shape[axis]
    if n == size:
        return x
    src = np.maximum((np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5, 0.0)
    low = np.minimum(src.astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    frac = (src - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


class Transform:
    """Callable preprocessing; ``repr`` shows its parameters.

    Example:
        >>> import numpy as np
        >>> t = Transform(size=(28, 28), channels=1)
        >>> t(np.full((2, 1, 8, 8), 255, np.uint8)).shape
        (2, 1, 28, 28)
    """

    def __init__(self, size, channels=1, mean=None, std=None):
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.mean = tuple(float(m) for m in (mean or (0.0,) * self.channels))
        self.std = tuple(float(s) for s in (std or (1.0,) * self.channels))
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise ConfigError(f"mean {self.mean} and std {self.std} need {self.channels} values each (std > 0)")

    def __repr__(self):
        return f"Transform(size={self.size}, channels={self.channels}, mean={self.mean}, std={self.std})"

    def _check(self, images):
        if images.ndim != 4:
            raise ConfigError(f"transforms() takes a batch (N, C, H, W); got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise ConfigError(f"transforms() takes 1 or 3 channels (NCHW); got {images.shape[1]} in shape "
                              f"{tuple(images.shape)} (an NHWC batch? transpose it to NCHW)")

    def __call__(self, images):
        if not isinstance(images, np.ndarray):
            return self._torch(images)
        self._check(images)
        x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise ConfigError(f"transforms() takes uint8 images (or floats in [0, 1]); got {images.dtype}")
        if x.shape[1] != self.channels:
            x = np.repeat(x, 3, axis=1) if self.channels == 3 else \
                np.tensordot(np.asarray(_LUMA, np.float32), x, axes=([0], [1]))[:, None]
        x = _resize_axis(_resize_axis(x, 2, self.size[0]), 3, self.size[1])
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x - mean) / std).astype(np.float32)

    def _torch(self, images):
        import torch
        if not isinstance(images, torch.Tensor):
            raise ConfigError(f"transforms() takes a numpy array or a torch tensor; got {type(images).__name__}")
        self._check(images)
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        elif images.is_floating_point():
            x = images.float()
        else:
            raise ConfigError(f"transforms() takes uint8 images (or floats in [0, 1]); got {images.dtype}")
        if x.shape[1] != self.channels:
            x = x.repeat(1, 3, 1, 1) if self.channels == 3 else \
                torch.einsum("c,nchw->nhw", torch.tensor(_LUMA, dtype=x.dtype, device=x.device), x)[:, None]
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return (x - mean) / std
