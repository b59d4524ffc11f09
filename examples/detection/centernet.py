"""CenterNet ("Objects as Points") on a sparse backbone, in the layout of the original tool's
ResNet-50-v1d CenterNet (its graph ships with the zoo: ``prunekit zoo info resnet50v1d-centernet-coco-80-original``): backbone, an up-sampling
neck (3x3 conv + BN + ReLU, 4x4 stride-2 transposed conv + BN + ReLU) to 1/4 of the input, then three
heads on the same features, each a 3x3 conv + ReLU + 1x1 conv: the heat map (one channel per class,
after a sigmoid), the box size and the centre's sub-cell offset (2 channels each, in output cells).

Training targets: a Gaussian peak (value 1 at the centre's cell) per object on its class's heat map,
the size and offset at that cell. Losses: CenterNet's penalty-reduced focal loss on the heat map, L1 on
size (weight 0.1) and offset (weight 1) at object centres. Decoding (a cell is a peak when it equals the
3x3 max-pool of the heat map; the top K peaks over all classes become boxes) and evaluation (pycocotools'
COCOeval, bbox, AP at 0.50:0.95 and AP50) are prunekit's (:mod:`prunekit.zoo.detection`), which the zoo
uses to re-measure its detection entries.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.zoo.detection import STRIDE, coco_eval, decode, predict  # noqa: F401 (this example's API)
from prunekit.zoo.detection import gather as _gather


class CenterNet(nn.Module):
    """``forward(x) -> (heat map, size, offset)``, each at 1/4 of the input (``backbone`` at 1/8)."""

    def __init__(self, backbone, in_channels, classes=2, width=64):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.heatmap = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, classes, 1),
                                     nn.Sigmoid())
        self.size = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 1))
        self.offset = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 1))
        nn.init.constant_(self.heatmap[2].bias, -2.19)  # start at p = 0.1 everywhere, as CenterNet does

    def forward(self, x):
        features = self.neck(self.backbone(x))
        return self.heatmap(features), self.size(features), self.offset(features)


def zoo_backbone(name):
    """A zoo classification entry cut before its global average pooling: ``(module, channels, entry)``."""
    from prunekit import ir, zoo
    entry = zoo.info(name)
    graph = zoo.load(name, framework="ir")
    pools = graph.find(op="nn.global_avg_pool2d")
    if not pools:
        raise zoo.ZooError(f"{name}: its graph has no global average pooling to cut before (a detection "
                           "backbone must keep its feature map); try a small-resnet entry")
    node = next(ref for ref in pools[-1].inputs if isinstance(ref, int))
    module = ir.to_torch(graph, outputs=node)
    size = entry.input["size"]
    with torch.no_grad():
        channels = module.eval()(torch.zeros(1, entry.input.get("channels", 1), *size)).shape[1]
    return module.train(), int(channels), entry


def targets(coco, canvas, classes=2, max_objects=None):
    """Dense training targets from COCO annotations: ``heat (N, C, H/4, W/4)``, per-object ``index``
    (flat cell), ``size``, ``offset`` ``(N, K, 2)`` and ``mask (N, K)``."""
    out = canvas // STRIDE
    ids = [im["id"] for im in coco["images"]]
    row = {image_id: i for i, image_id in enumerate(ids)}
    per_image = [[] for _ in ids]
    for a in coco["annotations"]:
        per_image[row[a["image_id"]]].append(a)
    k = max_objects or max(1, max(len(p) for p in per_image))
    n = len(ids)
    heat = np.zeros((n, classes, out, out), np.float32)
    index, mask = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    size, offset = np.zeros((n, k, 2), np.float32), np.zeros((n, k, 2), np.float32)
    grid_y, grid_x = np.mgrid[0:out, 0:out]
    for i, anns in enumerate(per_image):
        for j, a in enumerate(anns[:k]):
            x, y, w, h = (v / STRIDE for v in a["bbox"])
            cx, cy = x + w / 2, y + h / 2
            ix, iy = min(int(cx), out - 1), min(int(cy), out - 1)
            sigma = max(0.5, min(w, h) / 6.0)  # the peak spreads over about a third of the box's smaller side
            gauss = np.exp(-((grid_x - ix) ** 2 + (grid_y - iy) ** 2) / (2 * sigma ** 2))
            channel = heat[i, a["category_id"] - 1]
            np.maximum(channel, gauss, out=channel)
            index[i, j], mask[i, j] = iy * out + ix, 1.0
            size[i, j], offset[i, j] = (w, h), (cx - ix, cy - iy)
    return {"heat": heat, "index": index, "size": size, "offset": offset, "mask": mask}


def loss(outputs, batch):
    """``(total, {"heat", "size", "offset"})`` for one batch of targets (torch tensors)."""
    heat, size, offset = outputs
    p = heat.clamp(1e-4, 1 - 1e-4)
    gt = batch["heat"]
    positive = gt.eq(1).float()
    pos = (torch.log(p) * (1 - p) ** 2 * positive).sum()
    neg = (torch.log(1 - p) * p ** 2 * (1 - gt) ** 4 * (1 - positive)).sum()
    count = positive.sum().clamp(min=1)
    heat_loss = -(pos + neg) / count
    mask = batch["mask"][..., None]
    objects = mask.sum().clamp(min=1)
    size_loss = (F.l1_loss(_gather(size, batch["index"]), batch["size"], reduction="none") * mask).sum() / objects
    offset_loss = (F.l1_loss(_gather(offset, batch["index"]), batch["offset"], reduction="none") * mask).sum() / objects
    total = heat_loss + 0.1 * size_loss + offset_loss
    return total, {"heat": heat_loss.item(), "size": size_loss.item(), "offset": offset_loss.item()}
