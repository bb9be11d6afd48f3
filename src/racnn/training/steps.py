"""One short function per phase: which losses it sums, around :func:`racnn.training.loop.run_epoch`.

Owns: the classification epoch (warm-up and ``cls``), APN pre-training, the ranking-loss APN epoch and the fusion
epoch (METHOD §4), and :data:`EPOCH_FUNCTIONS`, the table from a phase's kind to its epoch.

May import: ``racnn.modeling.losses``, ``racnn.modeling.regions``, ``racnn.training.attention_targets``,
``racnn.training.loop`` and ``racnn.training.schedule``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from racnn.config import per_apn
from racnn.modeling.losses import apn_pretrain_loss, apn_targets, classification_losses, ranking_losses, region_targets
from racnn.modeling.regions import as_regions, overlap_penalty
from racnn.training.attention_targets import cam_targets, object_targets
from racnn.training.loop import StepContext, run_epoch
from racnn.training.schedule import crops_detached, prepare_phase


def _scale_logits(out) -> dict[str, Tensor]:
    return {f"s{s + 1}": logits for s, logits in enumerate(out.logits)}


def train_classification_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    net: nn.Module | None = None,
) -> dict[str, float]:
    """METHOD §4, 3a: APNs fixed; the sum of the per-scale cross-entropies trains backbones and classifiers.

    Args:
        model: the :class:`racnn.modeling.model.RACNN` (its parameters decide what is frozen).
        net: what to call forward on, when it differs from ``model`` (DDP or ``torch.compile`` wrapper).
        optimizer: over :func:`phase_parameters` ``(model, "cls")``.
    """
    prepare_phase(model, "cls")
    smoothing = ctx.train.label_smoothing

    def losses(net, inputs, targets, _extras):
        out = net(*inputs)
        return classification_losses(out.logits, targets, label_smoothing=smoothing), _scale_logits(out)

    with crops_detached(model):
        return run_epoch(model if net is None else net, loader, optimizer, scheduler, ctx, losses)


def train_apn_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    net: nn.Module | None = None,
) -> dict[str, float]:
    """METHOD §4, 3b: backbones and classifiers fixed (batch norm in eval mode); the ranking losses train the
    APNs. Their gradient reaches each APN through the differentiable crop and the frozen finer scales; with
    ``train.rank_coarser=fixed`` the coarser scale's probability of each pair is a constant target.

    With several regions per scale the ranking loss reads each scale's answer from its regions' pooled feature,
    and ``overlap``, ``train.region_overlap`` times the regions' mean pairwise IoU averaged over the zoomed
    scales, keeps the regions apart (docs/DESIGN.md, "Several regions per scale")."""
    prepare_phase(model, "apn")
    margin, coarser_fixed = ctx.train.margin, ctx.train.rank_coarser == "fixed"
    overlap_weight = getattr(ctx.train, "region_overlap", 0.0)

    def losses(net, inputs, targets, _extras):
        out = net(*inputs)
        named = ranking_losses(out.logits, targets, margin=margin, coarser_fixed=coarser_fixed)
        if out.boxes and as_regions(out.boxes[0]).shape[1] > 1:
            penalties = [overlap_penalty(boxes) for boxes in out.boxes_in_image]
            named["overlap"] = overlap_weight * torch.stack(penalties).mean()
        return named, _scale_logits(out)

    return run_epoch(model if net is None else net, loader, optimizer, scheduler, ctx, losses)


def pretrain_apn_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    net: nn.Module | None = None,
) -> dict[str, float]:
    """METHOD §4, 2: regress each APN onto the half-side window where its scale's conv map responds most.

    With ``train.pretrain_target`` ``cam`` or ``cam_extent`` the response is the class activation map of the scale's
    classifier for the true class (:mod:`racnn.training.attention_targets`). With ``object`` the first APN's target is
    the annotated object box, made square (the batches carry it: ``extras["object_boxes"]``), and every finer APN's
    is ``cam_extent`` (inside a zoom there is no annotated box).

    The targets come from ``feature_maps[s]`` (detached); the crops are detached too, so each APN learns from
    its own scale's target only. With K regions, the first APN's K boxes go to the K strongest disjoint windows
    (:func:`racnn.modeling.losses.region_targets`, matched in the best order) and every finer APN's box to the best
    window of its own region's map.
    """
    prepare_phase(model, "apn_pretrain")
    sides = per_apn(ctx.train.pretrain_side, model.num_scales)  # the target side of each APN
    target, threshold = ctx.train.pretrain_target, ctx.train.pretrain_threshold

    def losses(net, inputs, targets, extras):
        out = net(*inputs)
        named = {}
        for s, boxes in enumerate(out.boxes):
            side = sides[s]
            feature_map = out.feature_maps[s].detach().float()
            if target == "object" and s == 0:  # the annotated object box, made square (box-supervised)
                goal = object_targets(extras["object_boxes"], model.apns[0].min_side)
            elif target != "channels":  # the class activation map of the scale's classifier (one region)
                kind = "cam_extent" if target == "object" else target  # inside a zoom there is no annotated box
                weight, min_side = model.classifiers[s].weight, model.apns[s].min_side
                goal = cam_targets(feature_map, weight, targets, kind, side, threshold, min_side)  # (B, 3)
            elif s == 0 and boxes.dim() == 3:  # K regions proposed from one map
                goal = region_targets(feature_map, boxes.shape[1], side=side)  # (B, K, 3)
            else:  # one box per map: (B, C, h, w), or a region's (B, K, C, h, w) flattened to B K maps
                goal = apn_targets(feature_map.flatten(0, -4), side=side).view_as(boxes)
            named[f"apn_pre{s + 1}"] = apn_pretrain_loss(boxes.float(), goal)["apn_pre"]
        return named, _scale_logits(out)

    with crops_detached(model):
        return run_epoch(model if net is None else net, loader, optimizer, scheduler, ctx, losses)


def train_fusion_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    net: nn.Module | None = None,
) -> dict[str, float]:
    """METHOD §4, 4: only the fusion heads train (cross-entropy of each); everything else frozen, in eval mode."""
    prepare_phase(model, "fusion")
    smoothing = ctx.train.label_smoothing

    def losses(net, inputs, targets, _extras):
        out = net(*inputs)
        named = {f"fuse{key}": F.cross_entropy(z, targets, label_smoothing=smoothing) for key, z in out.fused.items()}
        return named, dict(out.fused)

    return run_epoch(model if net is None else net, loader, optimizer, scheduler, ctx, losses)


EPOCH_FUNCTIONS = {
    "warmup": train_classification_epoch,
    "apn_pretrain": pretrain_apn_epoch,
    "cls": train_classification_epoch,
    "apn": train_apn_epoch,
    "fusion": train_fusion_epoch,
}
