"""Training and evaluation of RA-CNN (METHOD §3-4), read top to bottom:

1. the schedule: warm-up, APN pre-training, ``rounds`` x (classification, APN), fusion (:func:`expand_schedule`);
2. what each phase trains, and which modules stay in eval mode (:func:`prepare_phase`);
3. one optimiser and learning-rate schedule per phase;
4. one epoch (:func:`run_epoch`): a plain loop that sums a dict of named losses, checks it is finite, and steps
   with gradient accumulation and mixed precision; the four phase epochs are thin wrappers around it;
5. :func:`evaluate`: every test image once; per-scale, fused, per-class and attention-box metrics;
6. data loaders whose order and augmentation are a function of (seed, epoch, index);
7. :func:`fit`: the whole run, with checkpoints, resume, logs and pictures; :func:`train_baseline`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from racnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from racnn.config import Config, ConfigError, PhaseConfig, TrainConfig, config_to_dict, resolve_device, save_config
from racnn.crop import boxes_to_xyxy
from racnn.distributed import (
    DistInfo,
    ShardSampler,
    all_reduce_sum,
    broadcast_buffers,
    cleanup,
    init_distributed,
)
from racnn.losses import apn_pretrain_loss, apn_targets, classification_losses, ranking_losses
from racnn.model import RACNN

__all__ = [
    "NonFiniteLossError",
    "SingleScaleBaseline",
    "StepContext",
    "TrainResult",
    "autocast",
    "build_datasets",
    "build_optimizer",
    "build_scheduler",
    "build_split",
    "evaluate",
    "expand_schedule",
    "head_names",
    "fit",
    "make_eval_loader",
    "make_train_loader",
    "object_boxes_in_input",
    "phase_parameters",
    "prepare_phase",
    "pretrain_apn_epoch",
    "run_epoch",
    "scalar_metrics",
    "steps_per_epoch",
    "train_apn_epoch",
    "train_baseline",
    "train_classification_epoch",
    "train_fusion_epoch",
    "write_eval_files",
]

PHASES = ("warmup", "apn_pretrain", "cls", "apn", "fusion")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase, epoch and step."""


# ----------------------------------------------------------------------------------------------------------
# 1. The schedule


def expand_schedule(train: TrainConfig) -> list[tuple[str, PhaseConfig, int]]:
    """The phases in the order they run: ``(kind, its PhaseConfig, round)``; phases with 0 epochs are left out.

    ``warmup`` and ``apn_pretrain`` are round 0, ``cls`` / ``apn`` of round ``r`` are round ``r`` (from 1),
    ``fusion`` is round ``rounds + 1``.
    """
    phases = [("warmup", train.warmup, 0), ("apn_pretrain", train.apn_pretrain, 0)]
    for r in range(1, train.rounds + 1):
        phases += [("cls", train.cls, r), ("apn", train.apn, r)]
    phases.append(("fusion", train.fusion, train.rounds + 1))
    return [(kind, phase, r) for kind, phase, r in phases if phase.epochs > 0]


# ----------------------------------------------------------------------------------------------------------
# 2. What each phase trains


def phase_parameters(model: nn.Module, kind: str) -> list[nn.Parameter]:
    """The parameters that phase ``kind`` trains (METHOD §4).

    ``warmup`` / ``cls``: backbones + classifiers (the "cls" group without the fusion heads); ``apn`` and
    ``apn_pretrain``: the APNs; ``fusion``: the fusion heads.
    """
    groups = model.param_groups()
    fusion = list(model.fusion_parameters())
    if kind in ("warmup", "cls"):
        fusion_ids = {id(p) for p in fusion}
        return [p for p in groups["cls"] if id(p) not in fusion_ids]
    if kind in ("apn", "apn_pretrain"):
        return list(groups["apn"])
    if kind == "fusion":
        return fusion
    raise ValueError(f"unknown phase {kind!r}; expected one of {PHASES}")


def prepare_phase(model: nn.Module, kind: str) -> list[nn.Parameter]:
    """Freeze everything but the phase's parameters and set train/eval modes; returns the trainable ones.

    A module is put in train mode only when all its parameters train, so the frozen backbones of the APN and
    fusion phases run in eval mode and their batch-norm statistics do not move (METHOD §4, 3b).
    """
    trainable = phase_parameters(model, kind)
    ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    model.eval()
    _train_trainable_subtrees(model, ids)
    return trainable


def _train_trainable_subtrees(module: nn.Module, ids: set[int]) -> None:
    params = list(module.parameters())
    if params and all(id(p) in ids for p in params):
        module.train()
        return
    for child in module.children():
        _train_trainable_subtrees(child, ids)


@contextmanager
def _crops_detached(model: nn.Module) -> Iterator[None]:
    """Inside: no gradient flows back through the zoomed inputs of scales 2..S (into the crop and the boxes).

    The classification phases keep the APNs fixed (METHOD §4, 3a): without this, the loss of scale s+1 would
    still reach backbone s through the box its frozen APN computes from backbone s's features. In APN
    pre-training it keeps each APN to its own scale's target.
    """
    backbones = getattr(model, "backbones", [])
    handles = [b.register_forward_pre_hook(lambda module, args: (args[0].detach(), *args[1:])) for b in backbones[1:]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------------------
# 3. Optimiser and learning-rate schedule, one fresh pair per phase


def build_optimizer(params: list[nn.Parameter], phase: PhaseConfig) -> torch.optim.Optimizer:
    if phase.optimizer == "sgd":
        return torch.optim.SGD(params, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    raise ConfigError(f"optimizer must be sgd or adamw, got {phase.optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, phase: PhaseConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine from ``phase.lr`` to 0 over the phase's optimiser steps, or constant; stepped once per step."""
    if phase.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def steps_per_epoch(loader: DataLoader, train: TrainConfig) -> tuple[int, int]:
    """``(batches, optimiser steps)`` of one epoch, given ``max_steps_per_epoch`` and ``grad_accum``."""
    batches = len(loader) if train.max_steps_per_epoch <= 0 else min(len(loader), train.max_steps_per_epoch)
    return batches, math.ceil(batches / train.grad_accum)


# ----------------------------------------------------------------------------------------------------------
# 4. One epoch


@dataclass
class StepContext:
    """What a training step needs besides the model, the data and the optimiser.

    Attributes:
        device: where the model lives; batches are moved there.
        train: the run settings (amp, grad_accum, channels_last, label_smoothing, margin, max_steps_per_epoch).
        scaler: the fp16 gradient scaler (CUDA only), else None.
        where: names the phase and epoch in progress bars and error messages.
        progress: show a tqdm bar.
        world_size: processes taking part (epoch statistics are averaged over them).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    train: TrainConfig = field(default_factory=TrainConfig)
    scaler: torch.amp.GradScaler | None = None
    where: str = "training"
    progress: bool = False
    world_size: int = 1

    def autocast(self):
        return autocast(self.device, self.train.amp)

    def to_device(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in ``none | bf16 | fp16`` (fp16 needs CUDA: it needs a gradient scaler)."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (got {device.type}); use train.amp=bf16 instead")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


LossFn = Callable[[nn.Module, Tensor, Tensor], tuple[dict[str, Tensor], dict[str, Tensor]]]


def run_epoch(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    compute_losses: LossFn,
) -> dict[str, float]:
    """One pass over ``loader``: ``compute_losses(net, images, targets) -> (named losses, named logits)``.

    The named losses are summed and checked to be finite; the named logits give the running accuracies.
    Gradients are accumulated over ``train.grad_accum`` batches (the loss is divided accordingly).

    Returns:
        Means over the epoch's images: ``loss`` (the sum), every named loss, ``acc_<name>`` per logits entry;
        plus ``lr`` (at the end), ``images_per_s`` and ``steps`` (optimiser steps).
    """
    from tqdm.auto import tqdm

    accum = ctx.train.grad_accum
    batches, _ = steps_per_epoch(loader, ctx.train)
    sums: dict[str, float] = defaultdict(float)
    images_seen, steps = 0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=batches, desc=ctx.where, disable=not ctx.progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if i == batches:
            break
        images, targets = ctx.to_device(images, targets)
        step_now = (i + 1) % accum == 0 or i + 1 == batches
        with _no_sync(net, not step_now):
            with ctx.autocast():
                losses, logits = compute_losses(net, images, targets)
            loss = sum(losses.values())
            values = _finite_values({"loss": loss, **losses}, f"{ctx.where}, step {i + 1}/{batches}")
            _backward(loss / accum, ctx.scaler)
        if step_now:
            _optimizer_step(optimizer, scheduler, ctx.scaler)
            steps += 1
        n = images.shape[0]
        images_seen += n
        for name, value in values.items():
            sums[name] += value * n
        hits = torch.stack([(out.argmax(-1) == targets).sum() for out in logits.values()]).tolist()  # one sync
        for name, correct in zip(logits, hits, strict=True):
            sums[f"acc_{name}"] += correct
        bar.update(1)
        accuracy = "/".join(f"{sums[f'acc_{name}'] / images_seen:.2f}" for name in logits)
        bar.set_postfix(
            loss=f"{sums['loss'] / images_seen:.3f}", acc=accuracy, img_s=f"{images_seen / _since(start):.1f}"
        )
    bar.close()
    return _epoch_stats(sums, images_seen, start, optimizer, steps, ctx)


def _since(start: float) -> float:
    return max(time.perf_counter() - start, 1e-9)


def _no_sync(net: nn.Module, skip_sync: bool):
    """DDP: no gradient all-reduce on the batches that only accumulate."""
    no_sync = getattr(net, "no_sync", None)
    return no_sync() if skip_sync and no_sync is not None else nullcontext()


def _finite_values(losses: dict[str, Tensor], where: str) -> dict[str, float]:
    """The losses as floats (one device sync); raises :class:`NonFiniteLossError` if their sum is not finite."""
    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist(), strict=True))
    if not math.isfinite(values["loss"]):
        named = ", ".join(f"{name}={value:.4g}" for name, value in values.items() if name != "loss")
        raise NonFiniteLossError(f"non-finite loss in {where}: {named}")
    return values


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _optimizer_step(optimizer, scheduler, scaler) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def _epoch_stats(sums, images_seen, start, optimizer, steps, ctx: StepContext) -> dict[str, float]:
    seconds = _since(start)
    if ctx.world_size > 1:  # average over every process's images (on the device: NCCL reduces CUDA tensors)
        keys = sorted(sums)
        packed = torch.tensor([sums[k] for k in keys] + [images_seen, seconds], dtype=torch.float64, device=ctx.device)
        all_reduce_sum(packed)
        sums = dict(zip(keys, packed[:-2].tolist(), strict=True))
        images_seen, seconds = int(packed[-2].item()), packed[-1].item() / ctx.world_size
    stats = {name: value / max(images_seen, 1) for name, value in sums.items()}
    stats.update(lr=optimizer.param_groups[0]["lr"], images_per_s=images_seen / seconds, steps=steps)
    return stats


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
        model: the :class:`racnn.model.RACNN` (its parameters decide what is frozen).
        net: what to call forward on, when it differs from ``model`` (DDP or ``torch.compile`` wrapper).
        optimizer: over :func:`phase_parameters` ``(model, "cls")``.
    """
    prepare_phase(model, "cls")
    smoothing = ctx.train.label_smoothing

    def losses(net, images, targets):
        out = net(images)
        return classification_losses(out.logits, targets, label_smoothing=smoothing), _scale_logits(out)

    with _crops_detached(model):
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
    APNs. Their gradient reaches each APN through the differentiable crop and the frozen finer scales."""
    prepare_phase(model, "apn")
    margin = ctx.train.margin

    def losses(net, images, targets):
        out = net(images)
        return ranking_losses(out.logits, targets, margin=margin), _scale_logits(out)

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

    The targets come from ``feature_maps[s]`` (detached); the crops are detached too, so each APN learns from
    its own scale's target only.
    """
    prepare_phase(model, "apn_pretrain")
    side = ctx.train.pretrain_side

    def losses(net, images, targets):
        out = net(images)
        named = {}
        for s, boxes in enumerate(out.boxes):
            goal = apn_targets(out.feature_maps[s].detach().float(), side=side)
            named[f"apn_pre{s + 1}"] = apn_pretrain_loss(boxes.float(), goal)["apn_pre"]
        return named, _scale_logits(out)

    with _crops_detached(model):
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

    def losses(net, images, targets):
        out = net(images)
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


# ----------------------------------------------------------------------------------------------------------
# 5. Evaluation


@dataclass
class _EvalSums:
    """Running sums over test images; summed over processes at the end (no padding, no duplicates)."""

    heads: list[str]
    num_classes: int
    num_boxes: int
    confusion_head: str
    device: torch.device
    topk: Tensor = None  # (H, 2) top-1 / top-5 hits per head
    confusion: Tensor = None  # (K, K) true x predicted, for confusion_head
    scalars: Tensor = None  # n, rank loss sum, then per box: side sum, with object box, centre inside, IoU sum

    def __post_init__(self) -> None:
        kw = {"dtype": torch.float64, "device": self.device}
        self.topk = torch.zeros(len(self.heads), 2, **kw)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, **kw)
        self.scalars = torch.zeros(2 + 4 * self.num_boxes, **kw)

    def all_reduce(self) -> None:
        for t in (self.topk, self.confusion, self.scalars):
            all_reduce_sum(t)


def head_names(num_scales: int) -> list[str]:
    """The heads :func:`evaluate` reports: ``s1..sS``, ``1+2``, ``1+2+3``..., ``fused`` and ``avg``."""
    fusions = [RACNN.fusion_name(n) for n in range(2, num_scales + 1)]
    return [f"s{s + 1}" for s in range(num_scales)] + fusions + ["fused", "avg"]


def _head_logits(out) -> dict[str, Tensor]:
    """Every head evaluated: scales ``s1..sS``, the fusion heads ``1+2 ...``, ``fused`` (all scales) and ``avg``
    (mean of the per-scale softmax probabilities, a parameter-free fusion)."""
    heads = {f"s{s + 1}": z.float() for s, z in enumerate(out.logits)}
    heads.update({key: z.float() for key, z in out.fused.items()})
    heads["fused"] = out.fused[RACNN.fusion_name(len(out.logits))].float()
    heads["avg"] = torch.stack([z.float().softmax(-1) for z in out.logits]).mean(0).log()
    return heads


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
            :func:`make_eval_loader`); the indices are needed for ``object_boxes``.
        device: defaults to the model's.
        margin: the ranking-loss margin for ``rank_loss``.
        amp, channels_last: as in training (``train.amp``, ``train.channels_last``).
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
        fraction of the scale-1 input side) and, when object boxes are known, ``box_in_object_s<s>`` (its centre
        lies in the object box) and ``box_iou_s<s>``, with ``n_object_boxes``. Non-scalars: ``confusion_head``,
        ``per_class_top1`` (list over classes) and ``confusion_matrix`` (K x K list, rows true class).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    heads = head_names(model.num_scales)
    if confusion_head not in heads:
        raise ValueError(f"confusion_head must be one of {heads}, got {confusion_head!r}")
    # Made before the loop, so a process whose shard is empty still takes part in the all-reduce.
    sums = _EvalSums(heads, model.num_classes, model.num_scales - 1, confusion_head, device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
            images, targets = batch[0].to(device), batch[1].to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = model(images)
            boxes = object_boxes[batch[2]].to(device) if object_boxes is not None and len(batch) > 2 else None
            _accumulate(sums, out, targets, margin, boxes)
    finally:
        for module, training in modes:
            module.training = training
    sums.all_reduce()
    if sums.scalars[0] == 0:
        raise ValueError("evaluate() got an empty loader")
    metrics = _finalize(sums, object_boxes is not None)
    if out_dir is not None and _is_main():
        write_eval_files(metrics, out_dir, class_names)
    return metrics


def _accumulate(sums: _EvalSums, out, targets: Tensor, margin: float, object_boxes: Tensor | None) -> None:
    n = targets.shape[0]
    for h, (name, logits) in enumerate(_head_logits(out).items()):
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
    for s, box in enumerate(out.boxes_in_image):
        box = box.float()
        base = 2 + 4 * s
        sums.scalars[base] += (2 * box[:, 2]).sum()  # side = 2 tl, in units of the (square) input side
        if object_boxes is None:
            continue
        known = ~torch.isnan(object_boxes).any(-1)
        obj = object_boxes[known]
        tx, ty = box[known, 0], box[known, 1]
        inside = (tx >= obj[:, 0]) & (tx <= obj[:, 2]) & (ty >= obj[:, 1]) & (ty <= obj[:, 3])
        sums.scalars[base + 1] += known.sum()
        sums.scalars[base + 2] += inside.sum()
        sums.scalars[base + 3] += _iou(boxes_to_xyxy(box[known]), obj).sum()


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two ``(N, 4)`` xyxy tensors."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area - inter).clamp(min=1e-12)


def _finalize(sums: _EvalSums, with_objects: bool) -> dict[str, Any]:
    n = sums.scalars[0].item()
    metrics: dict[str, Any] = {"n_images": int(n)}
    for h, name in enumerate(sums.heads):
        metrics[f"top1_{name}"] = sums.topk[h, 0].item() / n
        metrics[f"top5_{name}"] = sums.topk[h, 1].item() / n
    metrics["rank_loss"] = sums.scalars[1].item() / n
    for s in range(sums.num_boxes):
        base, key = 2 + 4 * s, f"s{s + 2}"
        metrics[f"box_side_{key}"] = sums.scalars[base].item() / n
        known = sums.scalars[base + 1].item()
        if with_objects and known > 0:
            metrics["n_object_boxes"] = int(known)
            metrics[f"box_in_object_{key}"] = sums.scalars[base + 2].item() / known
            metrics[f"box_iou_{key}"] = sums.scalars[base + 3].item() / known
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
    from racnn.plots import plot_confusion_matrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = metrics["confusion_matrix"]
    names = list(class_names or [str(i) for i in range(len(matrix))])
    summary = {**scalar_metrics(metrics), "confusion_head": metrics["confusion_head"]}
    summary["per_class_top1"] = dict(zip(names, metrics["per_class_top1"], strict=True))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out_dir / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, matrix, strict=True))
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", f"top1_{metrics['confusion_head']}"])
        writer.writerows(
            [name, sum(row), f"{acc:.6f}"]
            for name, row, acc in zip(names, matrix, metrics["per_class_top1"], strict=True)
        )
    head = metrics["confusion_head"]
    title = f"confusion matrix, head '{head}', top-1 {100 * metrics[f'top1_{head}']:.1f} % of {metrics['n_images']}"
    plot_confusion_matrix(matrix, names, out_dir / "confusion.png", title=title)


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# ----------------------------------------------------------------------------------------------------------
# 6. Data


class _SeededItems(Dataset):
    """Items keyed by ``(epoch, index)``: the random augmentation of each is seeded by ``(seed, epoch, index)``.

    So a run's data is the same with any number of loader workers, persistent or not, and after a resume.
    The process's global random state is left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed % 2**63)
            state = random.getstate()
            random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


class _EpochSampler(DistributedSampler):
    """``DistributedSampler`` (order = f(seed, epoch); one shard per process) that yields ``(epoch, index)``."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in super().__iter__())


class _WithIndex(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index][:2]
        return image, target, index


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, _EpochSampler]:
    """Shuffled training batches; call ``sampler.set_epoch(e)`` before each epoch (the order is f(seed, e))."""
    info = dist_info or DistInfo()
    sampler = _EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    loader = DataLoader(
        _SeededItems(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        drop_last=len(sampler) > batch_size,  # no tiny last batch in train-mode batch norm
        generator=torch.Generator().manual_seed(seed),  # leaves the global random stream alone
    )
    return loader, sampler


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches ``(images, targets, indices)`` in order; under torchrun process r gets indices r, r+N, ..."""
    info = dist_info or DistInfo()
    return DataLoader(
        _WithIndex(dataset),
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info.rank, info.world_size),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def build_split(cfg: Config, split: str, mean, std) -> Dataset:
    """One split of ``cfg.data`` with the paper's transform for it (random crop + flip for train, centre crop
    otherwise) at ``cfg.model.input_size``; the synthetic set is rendered at that size."""
    from racnn.data import build_dataset, build_transforms

    d = cfg.data
    options = dict(d.options)
    if d.dataset == "synthetic":
        count = d.synthetic_train if split == "train" else d.synthetic_test
        options = {"num_classes": d.synthetic_classes, "image_size": cfg.model.input_size,
                   "seed": d.synthetic_seed, "num_samples": count, **options}  # fmt: skip
    elif d.skip_bad_files:
        options["skip_bad_files"] = True
    transform = build_transforms(split, cfg.model.input_size, mean, std, d.resize_ratio, d.hflip)
    return build_dataset(d.dataset, d.root, split, transform, **options)


def build_datasets(cfg: Config, mean, std) -> tuple[Dataset, Dataset]:
    """The train and test sets of ``cfg.data`` (see :func:`build_split`)."""
    return build_split(cfg, "train", mean, std), build_split(cfg, "test", mean, std)


def object_boxes_in_input(dataset: Dataset, input_size: int, resize_ratio: float) -> Tensor | None:
    """Object boxes of a test set mapped through the test transform into the model's input coordinates.

    Uses ``dataset.object_boxes()`` (``(N, 4)`` normalised xyxy in each original image, NaN rows unknown) and
    the original image sizes (``dataset.image_sizes()`` as ``(N, 2)`` ``(H, W)``, or a square
    ``dataset.image_size``). The boxes go through the same resize (shorter side to
    ``round(input_size * resize_ratio)``) and centre crop as the images, by torchvision's own box transforms.

    Returns:
        ``(N, 4)`` normalised xyxy in the ``input_size`` square (clipped to it), or None if the data set has no
        object boxes.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    get_boxes = getattr(dataset, "object_boxes", None)
    boxes = get_boxes() if callable(get_boxes) else None
    if boxes is None:
        return None
    boxes = torch.as_tensor(boxes, dtype=torch.float64).view(-1, 4)
    if callable(getattr(dataset, "image_sizes", None)):
        sizes = torch.as_tensor(dataset.image_sizes(), dtype=torch.float64).view(-1, 2)
    elif isinstance(getattr(dataset, "image_size", None), int):
        sizes = torch.tensor([[dataset.image_size] * 2], dtype=torch.float64).expand(len(boxes), 2)
    else:
        return None
    geometry = v2.Compose([v2.Resize(round(input_size * resize_ratio), antialias=True), v2.CenterCrop(input_size)])
    mapped = torch.full_like(boxes, float("nan"))
    for i, (box, (h, w)) in enumerate(zip(boxes, sizes.tolist(), strict=True)):
        if torch.isnan(box).any():
            continue
        pixels = box * box.new_tensor([w, h, w, h])
        out = geometry(tv_tensors.BoundingBoxes(pixels[None], format="XYXY", canvas_size=(int(h), int(w))))
        mapped[i] = out[0].as_subclass(Tensor).double() / input_size
    return mapped.float()


# ----------------------------------------------------------------------------------------------------------
# 7. The whole run


@dataclass
class TrainResult:
    """What :func:`fit` returns: the run folder, the final test metrics and one dict per epoch."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def fit(cfg: Config, resume: str | Path | None = None) -> TrainResult:
    """Train RA-CNN with the schedule of ``cfg.train`` (see docs/TRAINING.md); under torchrun, with DDP.

    Args:
        cfg: the configuration (not modified; the resolved copy is saved in the run folder).
        resume: a run folder (or its ``last.pt``) to continue exactly where its last completed epoch ended.

    Returns:
        :class:`TrainResult`. ``Ctrl-C`` raises ``KeyboardInterrupt`` after saying how to resume.
    """
    device = resolve_device(cfg.train.device)
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (got {device.type}); use train.amp=bf16 instead")
    _warn_slow_bf16(device, cfg.train.amp)
    dist_info, device = init_distributed(device)
    try:
        try:
            run = _Run(copy.deepcopy(cfg), device, dist_info, resume)
        except ValueError as e:  # a backbone, data set option or class count that does not fit: the config's fault
            raise e if isinstance(e, (ConfigError, CheckpointError)) else ConfigError(str(e)) from e
        return run.train()
    finally:
        if dist_info.enabled:
            cleanup()


class _Run:
    """The state of one training run and the steps of its loop, each a short method."""

    def __init__(self, cfg: Config, device: torch.device, dist_info: DistInfo, resume: str | Path | None) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist_info
        self.main = dist_info.is_main
        ckpt = _load_resume(resume) if resume is not None else None
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.model, self.mean, self.std = self._build_model(ckpt)
        self.train_set, self.test_set = build_datasets(cfg, self.mean, self.std)
        self.class_names = _class_names(self.test_set, cfg.model.num_classes)
        self.train_loader, self.sampler = make_train_loader(
            self.train_set, cfg.data.batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers,
            dist_info=dist_info, pin_memory=device.type == "cuda",
        )  # fmt: skip
        self.test_loader = make_eval_loader(
            self.test_set, cfg.data.eval_batch_size, num_workers=cfg.data.num_workers, dist_info=dist_info,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        self.object_boxes = object_boxes_in_input(self.test_set, cfg.model.input_size, cfg.data.resize_ratio)
        self.schedule = expand_schedule(cfg.train)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
        self.state = {"phase_index": 0, "epoch": 0, "global_epoch": 0, "global_step": 0, "best": None}
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.resume_ckpt = ckpt
        if ckpt is not None:
            self.run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
            self.state.update(ckpt["state"])
            self.history = list(ckpt["state"]["history"])
            self.metrics = dict(ckpt["state"]["metrics"])
        else:
            self.run_dir = _new_run_dir(cfg, dist_info)
        self.writer = _tensorboard(self.run_dir, cfg.train.tensorboard and self.main)

    # -- set-up ------------------------------------------------------------------------------------------

    def _build_model(self, ckpt: dict | None):
        cfg = self.cfg
        if cfg.model.num_classes == 0:
            cfg.model.num_classes = _count_classes(cfg)
        model_cfg = replace(cfg.model, pretrained=None) if ckpt is not None else cfg.model
        model = RACNN.from_config(model_cfg)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        model.to(self.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        return model, list(model.mean), list(model.std)

    def _wrap(self, kind: str) -> nn.Module:
        """DDP (rebuilt per phase, after the phase's parameters are chosen) and torch.compile, if asked."""
        net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DDP(self.model, device_ids=ids)
        if self.cfg.train.compile:
            net = _CompiledOrEager(net)
        return net

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        if self.main:
            _log(f"run folder: {self.run_dir}  ({len(self.schedule)} phases, device {self.device})")
        try:
            for index in range(self.state["phase_index"], len(self.schedule)):
                self._run_phase(index)
            if not self.metrics:  # a schedule without epochs: still report the model's accuracy
                self.metrics = self._evaluate(final=True)
            self._finish()
        except KeyboardInterrupt:
            if self.main:
                _log(self._interrupted_message())
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        return TrainResult(self.run_dir, self.metrics, self.history)

    def _run_phase(self, index: int) -> None:
        kind, phase, round_index = self.schedule[index]
        trainable = prepare_phase(self.model, kind)
        optimizer = build_optimizer(trainable, phase)
        _, steps = steps_per_epoch(self.train_loader, self.cfg.train)
        scheduler = build_scheduler(optimizer, phase, steps * phase.epochs)
        first_epoch = self._restore(optimizer, scheduler)
        if kind == "fusion" and first_epoch == 0 and self.cfg.train.fusion_init == "classifiers":
            self._init_fusion()
        net = self._wrap(kind)
        where = _phase_label(index, len(self.schedule), kind, round_index)
        for epoch in range(first_epoch, phase.epochs):
            ctx = StepContext(
                self.device, self.cfg.train, self.scaler, f"{where}, epoch {epoch + 1}/{phase.epochs}",
                progress=self.cfg.train.progress and self.main and sys.stderr.isatty(), world_size=self.dist.world_size,
            )  # fmt: skip
            self.sampler.set_epoch(self.state["global_epoch"])
            stats = EPOCH_FUNCTIONS[kind](self.model, self.train_loader, optimizer, scheduler, ctx, net=net)
            self._end_epoch(index, epoch, stats, optimizer, scheduler)
        self._end_phase(index)

    def _init_fusion(self) -> None:
        """``train.fusion_init=classifiers``: the fusion heads start as the sum of the scales' classifiers, scaled
        by the feature norms of the first 32 training images (at most one test batch; the same images on every
        process and on resume)."""
        data = self.train_loader.dataset
        count = min(len(data), 32, self.cfg.data.eval_batch_size)
        items = [data[(self.state["global_epoch"], i)] for i in range(count)]
        images = torch.stack([item[0] for item in items])
        ctx = StepContext(self.device, self.cfg.train)
        images, _ = ctx.to_device(images, torch.zeros(0))
        with torch.no_grad(), ctx.autocast():
            out = self.model(images)
        self.model.init_fusion_from_classifiers(out.features)

    def _restore(self, optimizer, scheduler) -> int:
        """The epoch to start the phase at: 0, or, for the first phase of a resumed run, the saved one (with the
        saved optimiser, scheduler, scaler and random streams)."""
        ckpt, self.resume_ckpt = self.resume_ckpt, None
        if ckpt is None:
            return 0
        if ckpt["optimizer"] is not None:  # None when the saved epoch ended its phase: a fresh pair then
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        return ckpt["state"]["epoch"]

    def _end_epoch(self, index: int, epoch: int, stats: dict, optimizer, scheduler) -> None:
        kind, phase, round_index = self.schedule[index]
        broadcast_buffers(self.model)  # one model on every process for the evaluation and the checkpoint
        self.state.update(phase_index=index, epoch=epoch + 1, global_epoch=self.state["global_epoch"] + 1)
        self.state["global_step"] += int(stats["steps"])
        last = epoch + 1 == phase.epochs
        interval = self.cfg.train.eval_interval
        row = {"phase": kind, "phase_index": index, "round": round_index, "epoch": epoch + 1}
        row["global_epoch"] = self.state["global_epoch"]
        row.update({f"train_{k}": v for k, v in stats.items()})
        final = last and index + 1 == len(self.schedule)
        if final or (last and interval >= 0) or (interval > 0 and (epoch + 1) % interval == 0):
            self.metrics = self._evaluate(final=final)
            row.update(scalar_metrics(self.metrics))
        self.history.append(row)
        if self.main:
            _log(_epoch_line(row))
            self._write_logs(row)
        if last:  # a resume continues with the next phase and its fresh optimiser
            self.state.update(phase_index=index + 1, epoch=0)
            optimizer = scheduler = None
        self._save(optimizer, scheduler, row)

    def _evaluate(self, final: bool) -> dict[str, Any]:
        head = self.cfg.train.best_metric.split("_", 1)[-1]
        head = head if head in head_names(self.cfg.model.num_scales) else "fused"
        return evaluate(
            self.model, self.test_loader, device=self.device, margin=self.cfg.train.margin, amp=self.cfg.train.amp,
            channels_last=self.cfg.train.channels_last, object_boxes=self.object_boxes,
            class_names=self.class_names, confusion_head=head,
            out_dir=self.run_dir if final else None,
        )  # fmt: skip

    def _end_phase(self, index: int) -> None:
        kind, _, round_index = self.schedule[index]
        following = self.schedule[index + 1] if index + 1 < len(self.schedule) else None
        round_over = kind in ("apn_pretrain", "cls", "apn") and (following is None or following[2] != round_index)
        if round_over and self.main and self.cfg.train.visualize:
            self._attention_picture(round_index)

    def _attention_picture(self, round_index: int) -> None:
        try:
            from racnn.visualize import attention_grid
        except ImportError as e:
            warnings.warn(f"attention pictures skipped: racnn.visualize is not available ({e})", stacklevel=2)
            return
        count = min(8, len(self.test_set))
        items = [self.test_set[i] for i in range(count)]
        images = torch.stack([item[0] for item in items]).to(self.device)
        targets = [int(item[1]) for item in items]
        grid = attention_grid(self.model, images, self.mean, self.std, self.class_names, targets=targets)
        grid.save(self.run_dir / f"attention_round{round_index}.png")

    # -- output ------------------------------------------------------------------------------------------

    def _write_logs(self, row: dict[str, Any]) -> None:
        _write_csv(self.history, self.run_dir / "metrics.csv")
        if self.cfg.train.visualize:
            from racnn.plots import plot_training_curves

            plot_training_curves(self.history, self.run_dir / "curves.png")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("phase_index", "round", "epoch", "global_epoch"):
                    self.writer.add_scalar(key, value, row["global_epoch"])
            self.writer.flush()

    def _save(self, optimizer, scheduler, row: dict[str, Any]) -> None:
        """``last.pt`` (everything needed to resume), and ``best.pt`` when ``train.best_metric`` improved."""
        value = row.get(self.cfg.train.best_metric)
        improved = value is not None and (self.state["best"] is None or value > self.state["best"])
        if improved:
            self.state["best"] = value
        if not self.main:
            return
        state = {**self.state, "history": self.history, "metrics": scalar_metrics(self.metrics)}
        payload = {
            "config": config_to_dict(self.cfg),
            "class_names": self.class_names,
            "model": self.model.state_dict(),
            "state": state,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(),
        }
        save_checkpoint(self.run_dir / "last.pt", payload)
        if improved:
            best = {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
            save_checkpoint(self.run_dir / "best.pt", best)

    def _finish(self) -> None:
        if not self.main:
            return
        _save_safetensors(self.model, self.cfg, self.class_names, self.run_dir / "model.safetensors")
        top = {k: v for k, v in scalar_metrics(self.metrics).items() if k.startswith("top1_")}
        _log("final test top-1: " + "  ".join(f"{k[5:]} {100 * v:.2f}" for k, v in top.items()))
        _log(f"done: {self.run_dir}")

    def _interrupted_message(self) -> str:
        if not (self.run_dir / "last.pt").is_file():
            return "interrupted before the first epoch completed; nothing to resume"
        return (
            f"interrupted: the last completed epoch is saved in {self.run_dir / 'last.pt'} (the epoch in "
            f"progress is not); continue with:\n  racnn train --resume {self.run_dir}"
        )


class _CompiledOrEager:
    """``torch.compile(net)``; when compiling fails on this platform, warns once and runs ``net`` eagerly."""

    def __init__(self, net: nn.Module) -> None:
        self.eager, self.compiled = net, None
        try:
            self.compiled = torch.compile(net)
        except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
            warnings.warn(f"torch.compile unavailable here, running eagerly: {e}", stacklevel=2)

    def __getattr__(self, name: str):
        return getattr(self.eager, name)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                warnings.warn(f"torch.compile failed here, running eagerly: {str(e)[:500]}", stacklevel=2)
                self.compiled = None
        return self.eager(*args, **kwargs)


# -- helpers of the run --------------------------------------------------------------------------------------


def _warn_slow_bf16(device: torch.device, amp: str) -> None:
    """bf16 on a CPU without oneDNN bf16 kernels (no AVX-512 BF16 / AMX) runs convolutions on a slow fallback."""
    if amp == "bf16" and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(
            "train.amp=bf16 on a CPU without oneDNN bf16 support: convolutions fall back to a slow path (10-20x "
            "slower than float32 measured on an AVX2-only CPU); use train.amp=none here",
            stacklevel=3,
        )


def _phase_label(index: int, count: int, kind: str, round_index: int) -> str:
    return f"phase {index + 1}/{count} '{kind}'" + (f" (round {round_index})" if kind in ("cls", "apn") else "")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _epoch_line(row: dict[str, Any]) -> str:
    where = f"[{row['phase']}" + (f" r{row['round']}" if row["phase"] in ("cls", "apn") else "") + f" e{row['epoch']}]"
    losses = " ".join(
        f"{k[6:]} {v:.4f}"
        for k, v in row.items()
        if k.startswith("train_") and k[6:] not in ("lr", "images_per_s", "steps") and not k.startswith("train_acc")
    )
    tests = " ".join(f"{k[5:]} {100 * v:.1f}" for k, v in row.items() if k.startswith("top1_"))
    speed = f"{row.get('train_images_per_s', 0):.1f} img/s"
    return f"{where} {losses} | test top-1 {tests or '-'} | {speed}"


def _write_csv(history: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _tensorboard(run_dir: Path, wanted: bool):
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _new_run_dir(cfg: Config, dist_info: DistInfo) -> Path:
    """``output_dir/name``, or ``name-1``, ``name-2``... if it exists; made by rank 0, shared with the others."""
    base = Path(cfg.train.output_dir) / cfg.train.name
    run_dir = base
    if dist_info.is_main:
        n = 0
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir / "config.yaml")
    if dist_info.enabled:
        import torch.distributed as dist

        holder = [str(run_dir)]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    return run_dir


def _load_resume(resume: str | Path) -> dict[str, Any]:
    path = Path(resume)
    path = path / "last.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    for key in ("state", "rng"):
        if key not in ckpt:
            raise ConfigError(f"{path} is not a training checkpoint (no '{key}'); resume from a run's last.pt")
    return ckpt


def _count_classes(cfg: Config) -> int:
    if cfg.data.dataset == "synthetic":
        return cfg.data.synthetic_classes
    from racnn.data import build_dataset

    dataset = build_dataset(cfg.data.dataset, cfg.data.root, "train", None, **cfg.data.options)
    return len(dataset.classes)


def _class_names(dataset: Dataset, num_classes: int) -> list[str]:
    names = list(getattr(dataset, "classes", None) or [])
    if names and len(names) != num_classes:
        raise ConfigError(f"model.num_classes is {num_classes} but the data set has {len(names)} classes")
    return names or [str(i) for i in range(num_classes)]


def _rng_state() -> dict[str, Any]:
    """Every random stream, as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _save_safetensors(model: nn.Module, cfg: Config, class_names: list[str], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "racnn", "config": json.dumps(config_to_dict(cfg)), "class_names": json.dumps(class_names)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------
# The single-scale baseline


class SingleScaleBaseline(nn.Module):
    """The same backbone at the scale-1 input size, global average pooling and one fc: what RA-CNN must beat."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images).mean(dim=(2, 3)))  # (B, K)


def train_baseline(cfg: Config) -> dict[str, float]:
    """Train and test the single-scale baseline of ``cfg`` (single process).

    Same backbone and pre-trained weights, data, seed, precision switches and the optimiser of the ``warmup``
    phase (of ``cls`` without a warm-up), for as many epochs as RA-CNN's classification phases have
    (``warmup + rounds * cls``), one schedule over all of them.

    Returns:
        ``{"top1", "top5", "n_images", "epochs"}`` on the test set.
    """
    from racnn.backbones import build_backbone

    cfg = copy.deepcopy(cfg)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = _count_classes(cfg)
    backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained)
    model = SingleScaleBaseline(backbone, cfg.model.num_classes).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_set, test_set = build_datasets(cfg, backbone.mean, backbone.std)
    loader, sampler = make_train_loader(
        train_set, cfg.data.batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers
    )
    epochs = cfg.train.warmup.epochs + cfg.train.rounds * cfg.train.cls.epochs
    # The optimiser of RA-CNN's main classification phase: the warm-up when there is one, else the rounds'.
    phase = replace(cfg.train.warmup if cfg.train.warmup.epochs > 0 else cfg.train.cls, epochs=epochs)
    optimizer = build_optimizer(list(model.parameters()), phase)
    scheduler = build_scheduler(optimizer, phase, steps_per_epoch(loader, cfg.train)[1] * epochs)
    smoothing = cfg.train.label_smoothing

    def losses(net, images, targets):
        logits = net(images)
        return {"cls": F.cross_entropy(logits, targets, label_smoothing=smoothing)}, {"s1": logits}

    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        ctx = StepContext(device, cfg.train, None, f"baseline, epoch {epoch + 1}/{epochs}", cfg.train.progress)
        run_epoch(model, loader, optimizer, scheduler, ctx, losses)
    eval_loader = make_eval_loader(test_set, cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
    return {**_evaluate_classifier(model, eval_loader, device, cfg.train), "epochs": epochs}


@torch.no_grad()
def _evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device, train: TrainConfig) -> dict:
    model.eval()
    hits = torch.zeros(2, dtype=torch.float64)
    n = 0
    for images, targets, _ in loader:
        images, targets = images.to(device), targets.to(device)
        if train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, train.amp):
            logits = model(images).float()
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == targets[:, None]
        hits += torch.stack([top5[:, 0].sum(), top5.any(-1).sum()]).double().cpu()
        n += targets.shape[0]
    return {"top1": hits[0].item() / n, "top5": hits[1].item() / n, "n_images": n}
