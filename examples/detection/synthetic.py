"""A deterministic synthetic detection set: Fashion-MNIST objects placed on larger blank canvases, with
COCO-format annotations, two super-classes (``top``: T-shirt/top, pullover, coat, shirt; ``footwear``:
sandal, sneaker, ankle boot). The generator is :func:`prunekit.zoo.detection.synthetic` (the zoo measures
its detection entries on it); its docstring says how canvases are made. This script writes one set:

    python examples/detection/synthetic.py --split test --count 1000 --out runs/detection/test.json
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from prunekit.zoo.detection import CATEGORIES, SUPER_CLASSES, _iou  # noqa: E402,F401
from prunekit.zoo.detection import synthetic as make  # noqa: E402,F401


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
    sys.exit(main())
