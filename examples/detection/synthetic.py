"""A deterministic synthetic detection set: Fashion-MNIST objects placed on larger blank canvases, with
COCO-format annotations (``images``, ``annotations`` with ``bbox`` = [x, y, w, h], ``categories``).

Two super-classes, as the seed's COCO person/vehicle subset had two: ``top`` (T-shirt/top, pullover,
coat, shirt: Fashion-MNIST classes 0, 2, 4, 6) and ``footwear`` (sandal, sneaker, ankle boot: 5, 7, 9);
the other classes (trouser, dress, bag) are not used. Each canvas holds 1 to ``max_objects`` objects,
each a source image resized (bilinear) to a random side in ``sizes``, pasted at a random place
(``np.maximum``, so overlapping objects mix as light on a dark background) and kept only if its box
overlaps every earlier box of the canvas by IoU < 0.2 (else redrawn, up to 20 times). A box is the tight
box of the pasted object's pixels above 0.1. Training canvases draw from the source's training split,
test canvases from its test split; the same arguments always give the same set.

    python examples/detection/synthetic.py --split test --count 1000 --out runs/detection/test.json
"""

import argparse
import json
import os
import sys

import numpy as np

SUPER_CLASSES = {"top": (0, 2, 4, 6), "footwear": (5, 7, 9)}
CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(SUPER_CLASSES)]


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


def make(split="train", count=1000, seed=0, canvas=64, max_objects=4, sizes=(16, 28), source="fashion-mnist",
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
    """
    from prunekit.data import load
    from prunekit.errors import ConfigError
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--source", default="fashion-mnist")
    p.add_argument("--out", required=True, help="the COCO annotation file to write (the images go beside it, .npy)")
    args = p.parse_args(argv)
    images, coco = make(args.split, args.count, args.seed, args.canvas, source=args.source)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(coco, f)
    np.save(os.path.splitext(args.out)[0] + ".npy", images)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
