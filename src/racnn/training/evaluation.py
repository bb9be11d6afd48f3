"""Evaluation of an RA-CNN on a loader, and the metrics it reports.

Owns: :func:`evaluate` (every image once, summed over processes), the heads it reports (:func:`head_names`),
top-1/top-5 per head, the ranking loss, the attention boxes' scores against object boxes
(:mod:`racnn.training.box_scores`; with several regions, how much they overlap), the confusion matrix and per-class
accuracy, and the files they are written to (:func:`write_eval_files`).

May import: torch, ``racnn.modeling``, ``racnn.distributed``, ``racnn.pictures.plots``, ``racnn.precision``,
``racnn.training.box_scores`` and ``racnn.training.loop`` (for :func:`model_inputs`). Nothing here trains.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from racnn.distributed import all_reduce_sum
from racnn.modeling.heads import head_logits, head_names
from racnn.modeling.losses import ranking_losses
from racnn.modeling.regions import as_regions, overlap_penalty
from racnn.precision import autocast
from racnn.safety import spreadsheet_cell
from racnn.training.box_scores import BOX_SUMS, OBJECT_SUMS, box_scores, box_sums, object_scores, object_sums
from racnn.training.loop import model_inputs, to_channels_last


@dataclass
class _EvalSums:
    """Running sums over test images; summed over processes at the end (no padding, no duplicates)."""

    heads: list[str]
    num_classes: int
    num_boxes: int  # zoomed scales x regions
    confusion_head: str
    device: torch.device
    num_overlaps: int = 0  # zoomed scales whose regions' mutual IoU is summed (model.regions > 1), else 0
    topk: Tensor = None  # (H, 2) top-1 / top-5 hits per head
    confusion: Tensor = None  # (K, K) true x predicted, for confusion_head
    scalars: Tensor = None  # n, rank loss sum, then per zoomed scale (num_overlaps): the sum over images of its
    # regions' mean pairwise IoU
    boxes: Tensor = None  # (num_boxes, len(BOX_SUMS)): each box's sums against the object boxes
    objects: Tensor = None  # (len(OBJECT_SUMS),): the object boxes' own sums

    def __post_init__(self) -> None:
        kw = {"dtype": torch.float64, "device": self.device}
        self.topk = torch.zeros(len(self.heads), 2, **kw)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, **kw)
        self.scalars = torch.zeros(2 + self.num_overlaps, **kw)
        self.boxes = torch.zeros(self.num_boxes, len(BOX_SUMS), **kw)
        self.objects = torch.zeros(len(OBJECT_SUMS), **kw)

    def all_reduce(self) -> None:
        for t in (self.topk, self.confusion, self.scalars, self.boxes, self.objects):
            all_reduce_sum(t)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str | None = None,
    margin: float = 0.05,
    amp: str = "none",
    channels_last: bool = False,
    object_boxes: Tensor | None = None,
    class_names: list[str] | None = None,
    confusion_head: str = "fused",
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate every image of ``loader`` exactly once (no early stop); sums over processes under torchrun.

    Args:
        model: an RA-CNN; run in eval mode, each submodule's mode restored afterwards.
        loader: batches ``(images, targets)`` or ``(images, targets, dataset indices)`` (see
            :func:`make_eval_loader`); the indices are needed for ``object_boxes``. ``images`` may be a pair
            ``[inputs, sources]`` (``data.source_size``): the model then zooms into the sources.
        device: defaults to the model's.
        margin: the ranking-loss margin for ``rank_loss``.
        amp, channels_last: as in training (``train.amp``, ``train.channels_last``). A model whose weights were cast
            (:func:`racnn.precision.prepare_for_inference`) gets its batches in its own dtype; use ``amp="none"``.
        object_boxes: ``(N, 4)`` object boxes per dataset index, normalised ``(x1, y1, x2, y2)`` in the model's
            input coordinates (NaN rows: unknown); see :func:`object_boxes_in_input`.
        class_names: names for the confusion-matrix picture.
        confusion_head: the head (``"fused"``, ``"s1"``, ``"1+2"``, ``"avg"``...) whose confusion matrix and
            per-class accuracy are reported.
        out_dir: when given (and on the main process), write ``metrics.json``, ``confusion.csv``,
            ``confusion.png`` and ``per_class.csv`` there.

    Returns:
        Flat metrics (fractions in [0, 1]): ``n_images``; ``top1_<head>`` / ``top5_<head>`` for ``s1..sS``, the
        fusion heads ``1+2``, ``1+2+3``..., ``fused`` (= all scales) and ``avg``; ``rank_loss`` (sum over scale
        pairs, mean over images); for the box that makes scale ``s`` (s >= 2): ``box_side_s<s>`` (side as a
        fraction of the scale-1 input side), its spread over the images and, when object boxes are known, its
        scores against them (``box_in_object_s<s>``, ``box_covers_object_s<s>``, ``box_on_object_s<s>``,
        ``box_iou_s<s>``, ``box_side_corr_s<s>``: :mod:`racnn.training.box_scores`), with ``n_object_boxes`` and the
        objects' own spread (``object_centre_std_x`` ...); with several regions per scale
        (``model.regions = R > 1``) each of these per region, ``box_side_s<s>_r<r>`` etc., and ``region_iou_s<s>``,
        the mean IoU of every pair of scale ``s``'s regions in image coordinates (0: apart, 1: one box). Non-scalars:
        ``confusion_head``, ``per_class_top1`` (list over classes) and ``confusion_matrix`` (K x K list, rows true
        class).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    heads = head_names(model.num_scales)
    if confusion_head not in heads:
        raise ValueError(f"confusion_head must be one of {heads}, got {confusion_head!r}")
    # Made before the loop, so a process whose shard is empty still takes part in the all-reduce.
    regions = getattr(model, "regions", 1)
    zoomed = model.num_scales - 1
    sums = _EvalSums(heads, model.num_classes, zoomed * regions, confusion_head, device, zoomed if regions > 1 else 0)
    dtype = next(model.parameters()).dtype  # float32, or bf16 / fp16 for weights cast for inference
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
            # images, and the source, and the oracle's boxes (model.oracle_zoom)
            inputs = tuple(None if view is None else view.to(device, dtype) for view in model_inputs(batch[0]))
            targets = batch[1].to(device)
            if channels_last:
                inputs = tuple(to_channels_last(view) for view in inputs)
            with autocast(device, amp):
                out = model(*inputs)
            boxes = object_boxes[batch[2]].to(device) if object_boxes is not None and len(batch) > 2 else None
            _accumulate(sums, out, targets, margin, boxes)
    finally:
        for module, training in modes:
            module.training = training
    sums.all_reduce()
    if sums.scalars[0] == 0:
        raise ValueError("evaluate() got an empty loader")
    metrics = _finalize(sums, object_boxes is not None, regions)
    if out_dir is not None and _is_main():
        write_eval_files(metrics, out_dir, class_names)
    return metrics


def _accumulate(sums: _EvalSums, out, targets: Tensor, margin: float, object_boxes: Tensor | None) -> None:
    n = targets.shape[0]
    for h, (name, logits) in enumerate(head_logits(out).items()):
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, 5)
        hits = top5 == targets[:, None]
        sums.topk[h, 0] += hits[:, 0].sum()
        sums.topk[h, 1] += hits.any(-1).sum()
        if name == sums.confusion_head:
            flat = targets * sums.num_classes + top5[:, 0]
            sums.confusion += torch.bincount(flat, minlength=sums.num_classes**2).view_as(sums.confusion)
    rank = ranking_losses([z.float() for z in out.logits], targets, margin=margin)
    sums.scalars[0] += n
    sums.scalars[1] += sum(rank.values()) * n
    for s, boxes in enumerate(out.boxes_in_image[: sums.num_overlaps]):
        sums.scalars[2 + s] += overlap_penalty(boxes) * n
    objects = None if object_boxes is None else object_boxes.cpu()
    per_region = [region for boxes in out.boxes_in_image for region in as_regions(boxes).unbind(1)]  # scale-major
    for s, box in enumerate(per_region):  # (B, 3) each
        sums.boxes[s] += box_sums(box.detach().float().cpu(), objects).to(sums.boxes.device)
    if objects is not None:
        sums.objects += object_sums(objects).to(sums.objects.device)


def _finalize(sums: _EvalSums, with_objects: bool, regions: int = 1) -> dict[str, Any]:
    n = sums.scalars[0].item()
    metrics: dict[str, Any] = {"n_images": int(n)}
    for h, name in enumerate(sums.heads):
        metrics[f"top1_{name}"] = sums.topk[h, 0].item() / n
        metrics[f"top5_{name}"] = sums.topk[h, 1].item() / n
    metrics["rank_loss"] = sums.scalars[1].item() / n
    if with_objects:
        metrics.update(object_scores(sums.objects.cpu()))
    for s in range(sums.num_boxes):
        key = f"s{s // regions + 2}" + (f"_r{s % regions + 1}" if regions > 1 else "")
        metrics.update(box_scores(sums.boxes[s].cpu(), key))
    for s in range(sums.num_overlaps):
        metrics[f"region_iou_s{s + 2}"] = sums.scalars[2 + s].item() / n
    confusion = sums.confusion.long()
    per_class = confusion.diagonal().double() / confusion.sum(1).clamp(min=1).double()
    metrics["confusion_head"] = sums.confusion_head
    metrics["per_class_top1"] = per_class.tolist()
    metrics["confusion_matrix"] = confusion.tolist()
    return metrics


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of an :func:`evaluate` result (what metrics.csv and TensorBoard get)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_eval_files(metrics: dict[str, Any], out_dir: str | Path, class_names: list[str] | None = None) -> None:
    """``metrics.json`` (scalars + per-class accuracy), ``confusion.csv`` / ``.png``, ``per_class.csv``."""
    from racnn.pictures.plots import plot_confusion_matrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = metrics["confusion_matrix"]
    names = list(class_names or [str(i) for i in range(len(matrix))])
    summary = {**scalar_metrics(metrics), "confusion_head": metrics["confusion_head"]}
    summary["per_class_top1"] = dict(zip(names, metrics["per_class_top1"], strict=True))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    cells = [spreadsheet_cell(name) for name in names]  # class names come from someone else's data set
    with open(out_dir / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *cells])
        writer.writerows([name, *row] for name, row in zip(cells, matrix, strict=True))
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", f"top1_{metrics['confusion_head']}"])
        writer.writerows(
            [name, sum(row), f"{acc:.6f}"]
            for name, row, acc in zip(cells, matrix, metrics["per_class_top1"], strict=True)
        )
    head = metrics["confusion_head"]
    title = f"confusion matrix, head '{head}', top-1 {100 * metrics[f'top1_{head}']:.1f} % of {metrics['n_images']}"
    plot_confusion_matrix(matrix, names, out_dir / "confusion.png", title=title)


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
