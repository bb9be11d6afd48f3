"""RA-CNN losses (METHOD §3, §4.2): per-scale cross-entropy, ranking loss, APN pre-training.

Every function returns a dict of named scalar tensors; the training loop sums the ones its phase needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apn_pretrain_loss", "apn_targets", "classification_losses", "ranking_losses", "region_targets"]


def classification_losses(logits: Sequence[Tensor], target: Tensor, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """Cross-entropy of every scale.

    Args:
        logits: S tensors ``(B, K)``.
        target: ``(B,)`` class indices.
        label_smoothing: passed to :func:`torch.nn.functional.cross_entropy`.

    Returns:
        ``{"cls1": ..., "cls2": ..., ...}``, scalars averaged over the batch.
    """
    return {f"cls{s + 1}": F.cross_entropy(x, target, label_smoothing=label_smoothing) for s, x in enumerate(logits)}


def ranking_losses(
    logits: Sequence[Tensor], target: Tensor, margin: float = 0.05, coarser_fixed: bool = False
) -> dict[str, Tensor]:
    """Pairwise ranking loss between consecutive scales: ``max(0, p_t(s) - p_t(s + 1) + margin)``.

    ``p_t(s)`` is the softmax probability of the true class at scale s (probabilities, not logits: the margin
    is in probability units). Minimising it makes every finer scale more confident than the coarser one.

    Args:
        logits: S tensors ``(B, K)``.
        target: ``(B,)`` class indices.
        margin: required gap in probability.
        coarser_fixed: treat ``p_t(s)`` as a constant target for ``p_t(s + 1)`` (no gradient through it). In the
            APN phase the literal loss also pushes ``p_t(s)`` down, and that gradient reaches the APN that makes
            scale s's input: it rewards a worse box for the coarser scale (docs/DESIGN.md, "The ranking phase").

    Returns:
        ``{"rank1": ..., ..., "rank{S-1}": ...}``, scalars averaged over the batch.
    """
    dtype = torch.promote_types(logits[0].dtype, torch.float32)  # no softmax in half precision
    p_true = [x.softmax(dim=1, dtype=dtype).gather(1, target[:, None]).squeeze(1) for x in logits]  # S x (B,)
    coarser = [p.detach() for p in p_true] if coarser_fixed else p_true
    return {f"rank{s + 1}": (coarser[s] - p_true[s + 1] + margin).clamp_min(0).mean() for s in range(len(logits) - 1)}


@torch.no_grad()
def apn_targets(feature_map: Tensor, side: float = 0.5) -> Tensor:
    """Pre-training targets for an APN: the square where the conv map responds most (METHOD §4.2).

    The response is the channel mean of the map; a box filter of ``side`` times the map's shorter side (rounded
    to whole cells, at least one) sums it over every window position, and the best window's centre becomes the
    box centre (the centroid of the best windows where several tie, e.g. around a spot smaller than the window).
    The half side is ``side / 2``; the centre is clipped so that the box lies inside the image.

    Args:
        feature_map: ``(B, C, h, w)`` last conv map.
        side: box side in units of the input's shorter side, in ``(0, 1]``.

    Returns:
        ``(B, 3)`` boxes ``(tx, ty, tl)``, normalised, no gradient.
    """
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must have shape (B, C, h, w), got {tuple(feature_map.shape)}")
    if not 0 < side <= 1:
        raise ValueError(f"side must be in (0, 1], got {side}")
    height, width = feature_map.shape[-2:]
    short = min(height, width)
    window = max(1, round(side * short))  # square in cells, as the box is square in pixels
    response = feature_map.float().mean(dim=1, keepdim=True)  # (B, 1, h, w)
    scores = F.avg_pool2d(response, window, stride=1).flatten(1)  # (B, positions)
    # Every window position within float rounding of the best one ties with it (a hot spot smaller than the window
    # lies whole in many windows): take the centroid of those positions, so the spot sits in the box's middle
    # rather than in the corner that argmax's first-index rule would pick.
    top, bottom = scores.max(dim=1, keepdim=True).values, scores.min(dim=1, keepdim=True).values
    ties = (scores >= top - 1e-5 * (top - bottom)).float()  # (B, positions)
    cols = scores.new_tensor(range(width - window + 1)).repeat(height - window + 1)  # (positions,)
    rows = scores.new_tensor(range(height - window + 1)).repeat_interleave(width - window + 1)
    row = (ties * rows).sum(1) / ties.sum(1)  # (B,)
    col = (ties * cols).sum(1) / ties.sum(1)
    ty = (row + window / 2) / height  # (B,) window centre
    tx = (col + window / 2) / width
    tl = torch.full_like(tx, side / 2)
    # The half side in units of W and of H (the box is square in pixels).
    half_x, half_y = side / 2 * short / width, side / 2 * short / height
    tx = tx.clamp(half_x, 1 - half_x)
    ty = ty.clamp(half_y, 1 - half_y)
    return torch.stack([tx, ty, tl], dim=1).to(feature_map.dtype)  # (B, 3)


@torch.no_grad()
def region_targets(feature_map: Tensor, regions: int, side: float = 0.5) -> Tensor:
    """Pre-training targets for an APN with K regions: the K strongest windows that do not overlap.

    The windows are scored as in :func:`apn_targets`. The best one is taken, every window that overlaps it is
    ruled out, and so on K times (greedy non-maximum suppression); when the map is too small for K disjoint
    windows, the least overlapping of the rest is taken. Around each choice, the positions that tie with it and
    overlap it are averaged, as :func:`apn_targets` does.

    Args:
        feature_map: ``(B, C, h, w)`` last conv map.
        regions: K, at least 1.
        side: box side in units of the input's shorter side, in ``(0, 1]``.

    Returns:
        ``(B, K, 3)`` boxes ``(tx, ty, tl)``, strongest first, normalised, no gradient.
    """
    if feature_map.dim() != 4:
        raise ValueError(f"feature_map must have shape (B, C, h, w), got {tuple(feature_map.shape)}")
    if not 0 < side <= 1 or regions < 1:
        raise ValueError(f"side must be in (0, 1] and regions at least 1, got side={side}, regions={regions}")
    height, width = feature_map.shape[-2:]
    short = min(height, width)
    window = max(1, round(side * short))
    response = feature_map.float().mean(dim=1, keepdim=True)  # (B, 1, h, w)
    scores = F.avg_pool2d(response, window, stride=1).flatten(1)  # (B, positions)
    cols = scores.new_tensor(range(width - window + 1)).repeat(height - window + 1)  # (positions,)
    rows = scores.new_tensor(range(height - window + 1)).repeat_interleave(width - window + 1)
    spread = (scores.max(dim=1, keepdim=True).values - scores.min(dim=1, keepdim=True).values).clamp(min=1e-12)
    overlaps = torch.zeros_like(scores)  # (B, positions), how many chosen windows each position overlaps
    centres = []
    for _ in range(regions):
        # Least overlap first, then the highest score: scores lie within one spread, so one spread per overlap wins.
        ranked = scores - overlaps * 2 * spread  # (B, positions)
        best = ranked.argmax(dim=1, keepdim=True)  # (B, 1)
        row, col = rows[best], cols[best]  # (B, 1)
        near = ((rows - row).abs() < window) & ((cols - col).abs() < window)  # (B, positions): overlaps the best
        ties = near & (ranked >= ranked.gather(1, best) - 1e-5 * spread)
        ties = ties.float()
        centres.append(
            torch.stack([((ties * cols).sum(1) / ties.sum(1) + window / 2) / width,
                         ((ties * rows).sum(1) / ties.sum(1) + window / 2) / height], dim=1)
        )  # fmt: skip
        overlaps = overlaps + near.float()
    tx, ty = torch.stack(centres, dim=1).unbind(-1)  # (B, K) each
    half_x, half_y = side / 2 * short / width, side / 2 * short / height
    tl = torch.full_like(tx, side / 2)
    boxes = torch.stack([tx.clamp(half_x, 1 - half_x), ty.clamp(half_y, 1 - half_y), tl], dim=-1)  # (B, K, 3)
    return boxes.to(feature_map.dtype)


def apn_pretrain_loss(boxes: Tensor, targets: Tensor, beta: float = 0.1) -> dict[str, Tensor]:
    """Smooth-L1 regression of APN boxes onto :func:`apn_targets` (or :func:`region_targets`).

    With K regions the APN's K boxes have no fixed order against the targets (which come strongest first): each
    image's boxes are matched to its targets in the permutation with the smallest loss (K! of them, K <= 8 in
    practice 2 or 3), so region k keeps to whichever target it is nearest instead of being dragged across.

    Args:
        boxes: ``(B, 3)`` APN boxes, or ``(B, K, 3)``.
        targets: the target boxes, of the same shape.
        beta: where smooth-L1 turns from quadratic to linear, in normalised units (boxes differ by at most 1,
            so the default 1 of :func:`torch.nn.functional.smooth_l1_loss` would make it a plain squared error).

    Returns:
        ``{"apn_pre": ...}``, a scalar (the mean over images, regions and coordinates).
    """
    if boxes.shape != targets.shape:
        raise ValueError(f"boxes {tuple(boxes.shape)} and targets {tuple(targets.shape)} must have the same shape")
    targets = targets.to(boxes.dtype)
    if boxes.dim() == 2 or boxes.shape[1] == 1:
        return {"apn_pre": F.smooth_l1_loss(boxes, targets, beta=beta)}
    orders = torch.tensor(list(itertools.permutations(range(boxes.shape[1]))), device=boxes.device)  # (P, K)
    permuted = targets[:, orders]  # (B, P, K, 3)
    per_order = F.smooth_l1_loss(boxes[:, None].expand_as(permuted), permuted, beta=beta, reduction="none")
    return {"apn_pre": per_order.mean(dim=(2, 3)).min(dim=1).values.mean()}
