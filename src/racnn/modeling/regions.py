"""Several attention regions per scale (``model.regions = K``, issue #12): the helpers every part shares.

With K = 1 (the default) the model is RA-CNN as published and every tensor keeps its old shape. With K > 1 the
first APN proposes K boxes per image, each region is zoomed and runs through scale 2's backbone as one batch of
B * K images, and each region's chain goes on inside itself (scale 2 region k's APN proposes one box inside
region k), so every finer scale has K regions too. The shapes (docs/DESIGN.md, "Several regions per scale"):

  - boxes, boxes_in_image: ``(B, 3)`` when K = 1, ``(B, K, 3)`` when K > 1; :func:`as_regions` views either as
    ``(B, K, 3)``, so a consumer needs no branch;
  - crops of scales >= 2: ``(B, 3, Z, Z)`` when K = 1, ``(B, K, 3, Z, Z)`` when K > 1 (:func:`region_crops`);
  - a scale's feature: its K regions' pooled features, reduced by :func:`pool_regions` (``mean``, ``max`` or
    ``concat``), so every classifier reads one vector per image.

Owns those conventions, the region pooling, the differentiable pairwise IoU and the overlap penalty that keeps
the K boxes apart (``train.region_overlap``), and the starting layout of the K boxes.

May import: torch and ``racnn.modeling.crop``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from racnn.modeling.crop import boxes_to_xyxy

__all__ = [
    "REGION_POOLS",
    "as_regions",
    "initial_centres",
    "num_regions",
    "overlap_penalty",
    "pairwise_iou",
    "pool_regions",
    "pooled_width",
    "region_crops",
]

REGION_POOLS = ("mean", "max", "concat")
MAX_REGIONS = 8


def as_regions(boxes: Tensor) -> Tensor:
    """Boxes ``(B, 3)`` (one region) or ``(B, K, 3)`` as ``(B, K, 3)`` (a view, no copy)."""
    if boxes.dim() == 2:
        return boxes[:, None, :]
    if boxes.dim() != 3:
        raise ValueError(f"boxes must have shape (B, 3) or (B, K, 3), got {tuple(boxes.shape)}")
    return boxes


def num_regions(out) -> int:
    """K of a :class:`racnn.modeling.model.RACNNOutput` (1 when it has no zoomed scale)."""
    return as_regions(out.boxes[0]).shape[1] if out.boxes else 1


def region_crops(crop: Tensor) -> Tensor:
    """A zoomed scale's crops ``(B, 3, Z, Z)`` or ``(B, K, 3, Z, Z)`` as ``(B, K, 3, Z, Z)`` (a view)."""
    return crop[:, None] if crop.dim() == 4 else crop


def pooled_width(channels: int, regions: int, pool: str) -> int:
    """Width of a zoomed scale's pooled feature: ``channels``, or ``regions * channels`` for ``concat``."""
    return channels * regions if pool == "concat" else channels


def pool_regions(features: Tensor, regions: int, pool: str) -> Tensor:
    """One feature per image from its regions' features.

    Args:
        features: ``(B * K, C)``, image-major (the K regions of image 0 first).
        regions: K; with K = 1 ``features`` is returned as it is (bit for bit today's model).
        pool: ``mean``, ``max`` (element-wise over the regions) or ``concat`` (region 1's features first).

    Returns:
        ``(B, C)``, or ``(B, K * C)`` for ``concat``.
    """
    if regions == 1:
        return features
    per_image = features.view(-1, regions, features.shape[-1])  # (B, K, C)
    if pool == "mean":
        return per_image.mean(dim=1)
    if pool == "max":
        return per_image.amax(dim=1)
    if pool == "concat":
        return per_image.flatten(1)  # (B, K * C)
    raise ValueError(f"region pool must be one of {REGION_POOLS}, got {pool!r}")


def pairwise_iou(boxes: Tensor) -> Tensor:
    """IoU of every pair of a set of square boxes, differentiable in the boxes.

    Args:
        boxes: ``(B, K, 3)`` boxes ``(tx, ty, tl)`` in the normalised coordinates of one square image.

    Returns:
        ``(B, K, K)``; the diagonal is 1.
    """
    xyxy = boxes_to_xyxy(boxes.reshape(-1, 3)).view(*boxes.shape[:2], 4)  # (B, K, 4)
    a, b = xyxy[:, :, None, :], xyxy[:, None, :, :]  # (B, K, 1, 4), (B, 1, K, 4)
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)  # (B, K, K)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area = (xyxy[..., 2] - xyxy[..., 0]) * (xyxy[..., 3] - xyxy[..., 1])  # (B, K)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-12)


def overlap_penalty(boxes: Tensor) -> Tensor:
    """Mean IoU over the pairs of regions and the images: 0 when the K boxes are disjoint, 1 when they coincide.

    Args:
        boxes: ``(B, K, 3)`` with K >= 2, in the coordinates of one image.

    Returns:
        A scalar.
    """
    regions = boxes.shape[1]
    if regions < 2:
        raise ValueError(f"the overlap penalty needs at least 2 regions, got boxes of shape {tuple(boxes.shape)}")
    iou = pairwise_iou(boxes.float())  # (B, K, K)
    upper = torch.triu(torch.ones(regions, regions, dtype=torch.bool, device=boxes.device), diagonal=1)
    return iou[:, upper].mean()


def initial_centres(regions: int) -> list[tuple[float, float]]:
    """Where the K boxes of a fresh multi-region APN start: evenly on a circle around the image centre.

    As fractions of the range the centre can move in (the sigmoid of the APN's output): ``1/2 + 1/4 (cos, sin)``
    of ``2 pi k / K``, starting at the upper left, so no two boxes start on the same spot and the overlap
    penalty has a direction to push them in from the first step.
    """
    angles = [math.pi * (1.25 + 2 * k / regions) for k in range(regions)]
    return [(0.5 + 0.25 * math.cos(a), 0.5 + 0.25 * math.sin(a)) for a in angles]
