"""Image-dependent APN pre-training targets from the class activation map (``train.pretrain_target``).

The paper pre-trains each APN onto the square where its scale's last conv map responds most; racnn's default
(``channels``, :func:`racnn.modeling.losses.apn_targets`) scores the windows by the map's channel mean. On whole
photographs that response is high over much of the frame, and the window of a fixed side lands near the middle for
most images. The class activation map (CAM, Zhou et al. 2016) of the scale's own classifier for the image's true class
says where the evidence for that class is: a linear classifier after global average pooling is exactly the mean of
``sum_c w[y, c] * map[c]`` over the map, so no new layer is needed.

- ``cam``: the window of ``train.pretrain_side`` where the CAM is highest.
- ``cam_extent``: the square around the region where the CAM (upsampled 4x, bilinear, for sub-cell edges) is at
  least ``train.pretrain_threshold`` of the way from its minimum to its peak; its side follows the object (at least
  the APN's ``model.min_side``), its centre is the region's, moved inside the image.

Both need trained classifiers: the warm-up phase trains them first (a config check asks for it).

- ``object`` (box-supervised, not the paper: it reads the data set's annotated boxes in training): the first APN's
  target is the object box made square (:func:`object_targets`), every finer APN's ``cam_extent``. What an APN can
  learn when its target knows the object's size (docs/DESIGN.md, "Whole photographs").

``zoom_gain`` (:func:`zoom_gain_targets`, read by ``benchmarks/pretrain_targets.py --zoom-sides``, not a training
option): of squares of several sides around a centre, the one whose zoom the next scale's trained classifier is most
sure of: the ranking loss's own signal (a finer scale should be surer of the true class) searched over the box side,
from the class labels only. As a regression target of the round's APN phase, in place of the ranking loss, it did
not pay on the development split (docs/BENCHMARKS.md, "zoom_gain as the APN phase's target").

May import: torch, ``racnn.data.object_boxes``, ``racnn.modeling.crop``, ``racnn.modeling.losses``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from racnn.data.object_boxes import square_box
from racnn.modeling.crop import boxes_to_xyxy, compose_boxes
from racnn.modeling.losses import apn_targets

__all__ = [
    "PRETRAIN_TARGETS",
    "UPSAMPLE",
    "cam_targets",
    "class_activation_map",
    "extent_boxes",
    "object_targets",
    "zoom_gain_targets",
]

PRETRAIN_TARGETS = ("channels", "cam", "cam_extent", "object")
UPSAMPLE = 4  # the CAM is thresholded at 4x the map's resolution (a 7 x 7 map: 28 x 28)


@torch.no_grad()
def class_activation_map(feature_map: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """``(B, h, w)``: each image's map weighted by its true class's classifier row (``weight``: ``(N, C)``)."""
    return torch.einsum("bchw,bc->bhw", feature_map.float(), weight.detach().float()[labels])


@torch.no_grad()
def extent_boxes(response: Tensor, threshold: float, min_side: float) -> Tensor:
    """The square around where ``response`` (``(B, h, w)``) is at least ``threshold`` of its range above its minimum.

    Returns:
        ``(B, 3)`` boxes ``(cx, cy, half side)`` in units of the map's (square) input; a flat response gives the
        whole image.
    """
    fine = F.interpolate(response[:, None].float(), scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)[:, 0]
    low = fine.flatten(1).min(1).values[:, None, None]
    high = fine.flatten(1).max(1).values[:, None, None]
    mask = (fine - low) >= threshold * (high - low)  # (B, H, W); the peak is always in it
    height, width = mask.shape[-2:]
    cols, rows = mask.any(1), mask.any(2)  # (B, W), (B, H)
    col_index = torch.arange(width, device=mask.device)
    row_index = torch.arange(height, device=mask.device)
    x1 = torch.where(cols, col_index, width).min(1).values / width
    x2 = (torch.where(cols, col_index, -1).max(1).values + 1) / width
    y1 = torch.where(rows, row_index, height).min(1).values / height
    y2 = (torch.where(rows, row_index, -1).max(1).values + 1) / height
    return square_box(torch.stack([x1, y1, x2, y2], dim=1).float(), min_side=min_side)


@torch.no_grad()
def cam_targets(
    feature_map: Tensor, weight: Tensor, labels: Tensor, kind: str, side: float, threshold: float, min_side: float
) -> Tensor:
    """The ``cam`` or ``cam_extent`` pre-training targets of one APN (see the module's docstring).

    Args:
        feature_map: ``(B, C, h, w)`` the scale's last conv map.
        weight: ``(N, C)`` the scale's classifier weights.
        labels: ``(B,)`` the true classes.
        kind: ``"cam"`` or ``"cam_extent"``.
        side: the window side of ``cam``.
        threshold: the fraction of ``cam_extent``.
        min_side: the APN's smallest side.

    Returns:
        ``(B, 3)`` target boxes ``(cx, cy, half side)``.
    """
    cam = class_activation_map(feature_map, weight, labels)  # (B, h, w)
    if kind == "cam":
        return apn_targets(cam[:, None], side=side)
    if kind == "cam_extent":
        return extent_boxes(cam, threshold, min_side)
    raise ValueError(f"kind must be cam or cam_extent, got {kind!r}")


@torch.no_grad()
def object_targets(object_boxes: Tensor, min_side: float) -> Tensor:
    """The ``object`` targets: the squares ``(B, 3)`` around object boxes ``(cx, cy, half side)`` (as
    :class:`racnn.data.object_boxes.ObjectBoxViews` hands them), at least ``min_side`` (the APN's smallest side) and
    moved to lie inside the image."""
    return square_box(boxes_to_xyxy(object_boxes.float()), min_side=min_side)


@torch.no_grad()
def zoom_gain_targets(
    model, images: Tensor, source: Tensor | None, boxes: list[Tensor], apn: int, labels: Tensor, sides: list[float]
) -> Tensor:
    """The ``zoom_gain`` target of APN ``apn`` (0: the first): per image, of the squares of ``sides`` around the
    centre of its box (moved inside its input), the one whose zoom scale ``apn + 2``'s classifier is most sure of the
    true class (the first of ``sides`` where several tie).

    Args:
        model: the :class:`racnn.modeling.model.RACNN` (one region per scale): its backbones, classifiers and zoom.
        images: ``(B, 3, H, W)`` scale 1's input; ``source`` the same framing at a higher resolution, or ``None``.
        boxes: the APNs' boxes of this batch, ``(B, 3)`` each, each in its own input's frame (``out.boxes``).
        apn: which APN's target.
        labels: ``(B,)`` the true classes.
        sides: the candidate sides, in units of the APN's input.

    Returns:
        ``(B, 3)`` target boxes ``(cx, cy, half side)`` in the APN's own frame, no gradient.
    """
    chain = [box.detach().float() for box in boxes[: apn + 1]]
    centres = chain[-1][:, :2]
    candidates, scores = [], []
    for side in sides:
        half = torch.full_like(centres[:, :1], side / 2)
        candidate = torch.cat([centres.clamp(side / 2, 1 - side / 2), half], dim=1)  # (B, 3)
        composed = compose_boxes([*chain[:-1], candidate], (images.shape[-2], images.shape[-1]))[-1]
        pooled = model.backbones[apn + 1](model._zoom(images, source, composed)).mean(dim=(2, 3))
        log_p = model.classifiers[apn + 1](pooled).float().log_softmax(-1)
        candidates.append(candidate)
        scores.append(log_p.gather(1, labels[:, None])[:, 0])
    best = torch.stack(scores).argmax(0)  # (B,): the first of the sides where several tie
    return torch.stack(candidates)[best, torch.arange(len(best))]
