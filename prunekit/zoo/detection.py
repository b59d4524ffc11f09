"""The zoo's detection task: the synthetic Fashion-MNIST detection set, CenterNet decoding and COCO evaluation.

Used by ``examples/detection/`` (which trains the detectors) and by :func:`prunekit.zoo.evaluate` (which
re-measures a detection entry's AP). Needs torch (resizing, decoding) and ``pycocotools`` (evaluation),
both loaded lazily.

The set (:func:`synthetic`): Fashion-MNIST objects placed on larger blank canvases, with COCO-format
annotations (``images``, ``annotations`` with ``bbox`` = [x, y, w, h], ``categories``). Two super-classes,
as the seed's COCO person/vehicle subset had two: ``top`` (T-shirt/top, pullover, coat, shirt: Fashion-MNIST
classes 0, 2, 4, 6) and ``footwear`` (sandal, sneaker, ankle boot: 5, 7, 9); trouser, dress and bag are
not used. Each canvas holds 1 to ``max_objects`` objects, each a source image resized (bilinear) to a
random side in ``sizes``, pasted at a random place (``np.maximum``, so overlapping objects mix as light on
a dark background) and kept only if its box overlaps every earlier box of the canvas by IoU < 0.2 (else
redrawn, up to 20 times). A box is the tight box of the pasted object's pixels above 0.1. Training canvases
draw from the source's training split, test canvases from its test split; the same arguments always give
the same set, and a smaller ``count`` gives the first canvases of a larger one.
"""

import contextlib
import functools
import io

import numpy as np

from prunekit.errors import ConfigError

__all__ = ["SUPER_CLASSES", "CATEGORIES", "TEST_SET", "STRIDE", "synthetic", "decode", "coco_eval", "predict",
           "evaluate"]

SUPER_CLASSES = {"top": (0, 2, 4, 6), "footwear": (5, 7, 9)}
CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(SUPER_CLASSES)]
#: The test set detection entries are measured on (dataset ``fashion-mnist-detection``).
TEST_SET = {"split": "test", "count": 1000, "seed": 0, "canvas": 64, "max_objects": 4, "sizes": (16, 28),
            "source": "fashion-mnist"}
DATASET = "fashion-mnist-detection"
STRIDE = 4  # CenterNet's output stride


def _iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _resize(image, side):
    """Bilinear resize of one (h, w) float image to (side, side) (torch's interpolate, align_corners=False)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def synthetic(split="train", count=1000, seed=0, canvas=64, max_objects=4, sizes=(16, 28), source="fashion-mnist",
              data_root=None):
    """``(images, coco)``: uint8 canvases ``(count, 1, canvas, canvas)`` and their COCO annotation dict.

    Args:
        split: ``train`` or ``test`` (which split of ``source`` the objects come from).
        count: number of canvases.
        seed: the set's seed (the split is mixed in, so train and test differ for one seed).
        canvas: canvas side in pixels.
        max_objects: at most this many objects a canvas (at least 1).
        sizes: (smallest, largest) side of a pasted object, pixels.
        source: a 10-class :func:`prunekit.data.load` name whose labels follow Fashion-MNIST's (``fashion-mnist``;
            ``digits`` or ``synthetic`` for offline tests, whose labels then only pick the super-class).
        data_root: where ``source``'s files are (else the usual places).
    """
    from prunekit.data import load
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test'; got {split!r}")
    if not (isinstance(count, int) and count > 0 and max_objects >= 1 and 4 <= sizes[0] <= sizes[1] <= canvas):
        raise ConfigError(f"need count > 0, max_objects >= 1 and 4 <= sizes[0] <= sizes[1] <= canvas; got count="
                          f"{count!r}, max_objects={max_objects!r}, sizes={sizes!r}, canvas={canvas!r}")
    data = load(source, root=data_root)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    category = {label: i + 1 for i, labels in enumerate(SUPER_CLASSES.values()) for label in labels}
    pool = np.flatnonzero(np.isin(y, list(category)))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images = np.zeros((count, 1, canvas, canvas), np.float32)
    coco = {"info": {"description": f"prunekit synthetic detection set: {source} objects on {canvas}x{canvas} "
                                    f"canvases ({split}, {count} images, seed {seed})"},
            "images": [], "annotations": [], "categories": [dict(c) for c in CATEGORIES]}
    for i in range(count):
        image_id = i + 1
        coco["images"].append({"id": image_id, "width": canvas, "height": canvas, "file_name": f"{split}-{i:06d}"})
        boxes = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                j = int(rng.choice(pool))
                side = int(rng.integers(sizes[0], sizes[1] + 1))
                top, left = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                obj = np.clip(_resize(x[j].mean(0), side), 0.0, 1.0)
                rows, cols = np.nonzero(obj > 0.1)
                if not len(rows):
                    continue
                box = [float(left + cols.min()), float(top + rows.min()), float(cols.max() - cols.min() + 1),
                       float(rows.max() - rows.min() + 1)]
                if all(_iou(box, b) < 0.2 for b in boxes):
                    break
            else:
                continue
            region = images[i, 0, top:top + side, left:left + side]
            np.maximum(region, obj, out=region)
            boxes.append(box)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": category[int(y[j])], "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": 0})
    return np.rint(images * 255.0).astype(np.uint8), coco


def gather(maps, index):
    """``maps (N, C, H, W)`` at flat cells ``index (N, K)`` -> ``(N, K, C)``."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    return flat.gather(2, index[:, None, :].expand(n, c, index.shape[1])).permute(0, 2, 1)


def decode(heat, size, offset, top_k=20, image_ids=None):
    """COCO detections ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` (input pixels) from
    CenterNet's outputs: ``heat (N, classes, H, W)`` after the sigmoid, ``size`` and ``offset`` ``(N, 2, H, W)``
    in output cells.

    Peaks: cells equal to the 3x3 max-pool of their heat map; the ``top_k`` highest over all classes of
    an image become boxes (centre = cell + offset, side = size, times the stride); a score of 0 is no box."""
    import torch
    from torch.nn import functional as F
    with torch.no_grad():
        n, classes, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
        scores, flat = peaks.reshape(n, -1).topk(min(top_k, classes * h * w))
        category, cell = flat // (h * w), flat % (h * w)
        wh, off = gather(size, cell), gather(offset, cell)
        cx = (cell % w).float() + off[..., 0]
        cy = torch.div(cell, w, rounding_mode="floor").float() + off[..., 1]
        bw, bh = wh[..., 0].clamp(min=0), wh[..., 1].clamp(min=0)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], -1) * STRIDE
    ids = list(range(1, n + 1)) if image_ids is None else list(image_ids)
    results = []
    for i in range(n):
        for s, c, box in zip(scores[i].tolist(), category[i].tolist(), boxes[i].tolist()):
            if s > 0:
                results.append({"image_id": int(ids[i]), "category_id": int(c) + 1,
                                "bbox": [round(v, 3) for v in box], "score": round(s, 5)})
    return results


def coco_eval(coco, detections, quiet=True):
    """pycocotools' bbox evaluation: ``{"map": AP@[.50:.95], "map50": AP@.50}`` (0 for no detections)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ConfigError("detection metrics need pycocotools: pip install pycocotools") from None
    if not detections:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        gt = COCO()
        gt.dataset = dict(coco)
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": float(evaluator.stats[0]), "map50": float(evaluator.stats[1])}


def predict(model, transform, images, coco, batch=200, top_k=20):
    """Detections of ``model`` (returning heat map, size, offset) on uint8 ``images`` whose ids are
    ``coco["images"]``'s, in order."""
    import torch
    was_training = model.training
    model.eval()
    ids = [im["id"] for im in coco["images"]]
    found = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            heat, size, offset = model(transform(torch.from_numpy(np.array(images[i:i + batch]))))
            found += decode(heat, size, offset, top_k, ids[i:i + batch])
    model.train(was_training)
    return found


@functools.lru_cache(maxsize=2)
def _test_set(count, data_root):
    images, coco = synthetic(**dict(TEST_SET, count=count), data_root=data_root)
    images.flags.writeable = False
    return images, coco


def evaluate(entry, limit=None, data_root=None, model=None):
    """AP and AP50 of a detection entry on :data:`TEST_SET` (its first ``limit`` canvases)."""
    from prunekit import zoo
    count = TEST_SET["count"] if limit is None else int(min(limit, TEST_SET["count"]))
    images, coco = _test_set(count, data_root)
    model = model if model is not None else zoo.load(entry.name)
    found = predict(model, entry.transforms(), images, coco)
    return {**coco_eval(coco, found), "examples": len(images)}
