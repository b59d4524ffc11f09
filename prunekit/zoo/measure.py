"""Re-measuring a zoo entry's metric (torch, loaded lazily by :func:`prunekit.zoo.evaluate`)."""

import functools

import numpy as np

from prunekit.zoo.registry import MEASURED, ZooError

__all__ = ["evaluate", "held_out_images"]


@functools.lru_cache(maxsize=2)
def _test_split(dataset, data_root):
    from prunekit.data import load
    data = load(dataset, root=data_root)
    images = np.rint(data.x_test * 255.0).astype(np.uint8)  # exact for the IDX sets: the loader divided by 255
    images.flags.writeable = False
    return images, data.y_test


def held_out_images(dataset, limit=None, data_root=None):
    """The test split of a :mod:`prunekit.data` set as uint8 ``(N, C, H, W)`` and int64 labels (cached)."""
    from prunekit.data import DATASETS
    if dataset.split(":")[0] not in DATASETS:
        raise ZooError(f"the data set {dataset!r} is not one prunekit can load ({', '.join(DATASETS)}); "
                       "this entry's metric cannot be re-measured here")
    images, labels = _test_split(dataset, data_root)
    return images[:limit], labels[:limit]


def evaluate(entry, limit=None, data_root=None, batch_size=500, model=None):
    import torch

    from prunekit import zoo
    if entry.metrics_origin != MEASURED:
        raise ZooError(f"{entry.name}: its figure was {entry.metrics_origin} on {entry.dataset}, which "
                       f"prunekit cannot load; it cannot be re-measured here")
    if entry.task == "detection":
        from prunekit.zoo import detection
        if entry.dataset != detection.DATASET:
            raise ZooError(f"{entry.name}: detection entries are re-measured on {detection.DATASET!r}; this one "
                           f"was trained on {entry.dataset!r}")
        return detection.evaluate(entry, limit=limit, data_root=data_root, model=model)
    images, labels = held_out_images(entry.dataset, limit, data_root)
    model = model if model is not None else zoo.load(entry.name)
    model.eval()
    transform = entry.transforms()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(transform(torch.tensor(images[i:i + batch_size])))
            correct += int((logits.argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return {"top1": correct / len(labels), "examples": int(len(labels))}
