"""The attention's score against the annotated object box: how well each scale's box finds the object.

An attention box is ``(cx, cy, half side)`` in units of scale 1's (square) input; an object box is normalised
``(x1, y1, x2, y2)`` in the same input (:func:`racnn.training.loaders.object_boxes_in_input`), NaN where unknown.
Everything is kept as sums over images, so that processes under torchrun add theirs up before the ratios are
taken. Per box, over the images with a known object box:

- ``box_in_object``: the box's centre lies inside the object box (a centred box already scores high when objects
  sit near the middle: this count alone proves little);
- ``box_covers_object``: the mean fraction of the object box inside the attention box;
- ``box_on_object``: the mean fraction of the attention box that lies on the object box (1: inside the object);
- ``box_iou``: the mean IoU;
- ``box_side_corr``: the correlation over images between the box's side and the object's size (the square root of
  its area), NaN when either does not vary;

and over every image, the spread: ``box_centre_std_x``, ``box_centre_std_y``, ``box_side_std``. The objects' own
spread (``object_centre_std_x``, ``object_centre_std_y``, ``object_size_mean``, ``object_size_std``) is the yardstick:
an attention that follows the object spreads about as much as the objects do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from racnn.modeling.crop import boxes_to_xyxy

__all__ = ["BOX_SUMS", "OBJECT_SUMS", "box_scores", "box_sums", "object_scores", "object_sums", "xyxy_iou"]

# What is summed per attention box: images; side, its square; centre x, y and their squares (all images); then over
# the images with a known object: count, centre in, IoU, cover, on-object, side, side^2, size, size^2, side*size.
BOX_SUMS = ("n", "side", "side2", "cx", "cx2", "cy", "cy2", "known", "centre_in", "iou", "cover", "on", "ks", "ks2",
            "size", "size2", "ks_size")  # fmt: skip
OBJECT_SUMS = ("known", "cx", "cx2", "cy", "cy2", "size", "size2")


def xyxy_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two ``(N, 4)`` xyxy tensors."""
    inter = _intersection(a, b)
    return inter / (_area(a) + _area(b) - inter).clamp(min=1e-12)


def _area(box: Tensor) -> Tensor:
    return (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)


def _intersection(a: Tensor, b: Tensor) -> Tensor:
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    return w * h


def _size(objects: Tensor) -> Tensor:
    """The square root of each object box's area: its side were it square, in units of the input side."""
    return _area(objects).sqrt()


def box_sums(boxes: Tensor, objects: Tensor | None) -> Tensor:
    """The :data:`BOX_SUMS` of one batch of attention boxes.

    Args:
        boxes: ``(B, 3)`` boxes ``(cx, cy, half side)`` in the input's units.
        objects: ``(B, 4)`` object boxes, xyxy in the same units, NaN rows unknown; or None.

    Returns:
        ``(len(BOX_SUMS),)`` float64 sums.
    """
    boxes = boxes.double()
    cx, cy, side = boxes[:, 0], boxes[:, 1], 2 * boxes[:, 2]
    sums = [len(boxes), side.sum(), (side**2).sum(), cx.sum(), (cx**2).sum(), cy.sum(), (cy**2).sum()]
    if objects is None:
        return torch.tensor([float(v) for v in sums] + [0.0] * (len(BOX_SUMS) - len(sums)), dtype=torch.float64)
    objects = objects.double()
    known = ~torch.isnan(objects).any(-1)
    obj, box = objects[known], boxes[known]
    xyxy = boxes_to_xyxy(box)  # square boxes in the square input
    inter, box_area, obj_area = _intersection(xyxy, obj), _area(xyxy), _area(obj)
    inside = (box[:, 0] >= obj[:, 0]) & (box[:, 0] <= obj[:, 2]) & (box[:, 1] >= obj[:, 1]) & (box[:, 1] <= obj[:, 3])
    ks, size = 2 * box[:, 2], _size(obj)
    iou = inter / (box_area + obj_area - inter).clamp(min=1e-12)
    sums += [known.sum(), inside.sum(), iou.sum(), (inter / obj_area.clamp(min=1e-12)).sum(),
             (inter / box_area.clamp(min=1e-12)).sum(), ks.sum(), (ks**2).sum(), size.sum(), (size**2).sum(),
             (ks * size).sum()]  # fmt: skip
    return torch.tensor([float(v) for v in sums], dtype=torch.float64)


def object_sums(objects: Tensor) -> Tensor:
    """The :data:`OBJECT_SUMS` of one batch of object boxes (``(B, 4)`` xyxy, NaN rows unknown)."""
    obj = objects.double()[~torch.isnan(objects).any(-1)]
    cx, cy, size = (obj[:, 0] + obj[:, 2]) / 2, (obj[:, 1] + obj[:, 3]) / 2, _size(obj)
    sums = [len(obj), cx.sum(), (cx**2).sum(), cy.sum(), (cy**2).sum(), size.sum(), (size**2).sum()]
    return torch.tensor([float(v) for v in sums], dtype=torch.float64)


def _std(total: float, squares: float, n: float) -> float:
    """The population standard deviation from a sum and a sum of squares."""
    if n <= 0:
        return math.nan
    return math.sqrt(max(squares / n - (total / n) ** 2, 0.0))


def box_scores(sums: Tensor, key: str) -> dict[str, float]:
    """Metrics ``box_<name>_<key>`` from :func:`box_sums` added up over every batch (and process).

    The object scores appear only when some image had a known object box.
    """
    s = dict(zip(BOX_SUMS, sums.tolist(), strict=True))
    n = s["n"]
    metrics = {
        f"box_side_{key}": s["side"] / n,
        f"box_side_std_{key}": _std(s["side"], s["side2"], n),
        f"box_centre_std_x_{key}": _std(s["cx"], s["cx2"], n),
        f"box_centre_std_y_{key}": _std(s["cy"], s["cy2"], n),
    }
    known = s["known"]
    if known <= 0:
        return metrics
    side_std, size_std = _std(s["ks"], s["ks2"], known), _std(s["size"], s["size2"], known)
    covariance = s["ks_size"] / known - (s["ks"] / known) * (s["size"] / known)
    # Sides that do not vary (a fixed zoom, a box at its smallest side) have no correlation: NaN, not 0. A float32
    # box of one side, composed and summed over batches, still spreads by ~1e-8: below 1e-6 a side is constant.
    corr = covariance / (side_std * size_std) if side_std > 1e-6 and size_std > 1e-6 else math.nan
    metrics.update({
        f"box_in_object_{key}": s["centre_in"] / known,
        f"box_covers_object_{key}": s["cover"] / known,
        f"box_on_object_{key}": s["on"] / known,
        f"box_iou_{key}": s["iou"] / known,
        f"box_side_corr_{key}": max(-1.0, min(1.0, corr)) if not math.isnan(corr) else corr,
    })  # fmt: skip
    return metrics


def object_scores(sums: Tensor) -> dict[str, float]:
    """``n_object_boxes`` and the objects' own spread from :func:`object_sums` added up; empty when none known."""
    s = dict(zip(OBJECT_SUMS, sums.tolist(), strict=True))
    n = s["known"]
    if n <= 0:
        return {}
    return {
        "n_object_boxes": int(n),
        "object_centre_std_x": _std(s["cx"], s["cx2"], n),
        "object_centre_std_y": _std(s["cy"], s["cy2"], n),
        "object_size_mean": s["size"] / n,
        "object_size_std": _std(s["size"], s["size2"], n),
    }
