"""The epoch loop: one pass over a loader with a phase's loss function.

Owns: :class:`StepContext` (device, settings, scaler, progress), :func:`run_epoch` (mixed precision, gradient
accumulation, DDP ``no_sync``, the non-finite check, the progress bar, the epoch's statistics) and
:class:`NonFiniteLossError`. What the losses are is the caller's business (:mod:`racnn.training.steps`).

May import: torch, tqdm, ``racnn.config``, ``racnn.distributed``, ``racnn.precision`` and
``racnn.training.schedule``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from racnn.config import TrainConfig
from racnn.distributed import (
    all_reduce_sum,
)
from racnn.precision import autocast
from racnn.training.schedule import steps_per_epoch


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase, epoch and step."""


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

    def to_device(self, images: Tensor | Sequence[Tensor], targets: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """A batch's images (a tensor, or ``[input, source]`` with ``data.source_size``) as the model's positional
        inputs on the device, and its targets."""
        inputs = tuple(
            None if view is None else view.to(self.device, non_blocking=True) for view in model_inputs(images)
        )
        if self.train.channels_last:
            inputs = tuple(to_channels_last(view) for view in inputs)
        return inputs, targets.to(self.device, non_blocking=True)


def to_channels_last(view: Tensor | None) -> Tensor | None:
    """An image batch in channels-last layout; anything else (boxes, a missing source) as it is."""
    return view.contiguous(memory_format=torch.channels_last) if view is not None and view.dim() == 4 else view


def model_inputs(images: Tensor | Sequence[Tensor] | dict[str, Tensor]) -> tuple[Tensor | None, ...]:
    """``(images,)`` for a batch of plain images, ``(images, source)`` for a batch of
    :class:`racnn.data.SourceViews` pairs, ``(images, source or None, first_boxes)`` for a batch of
    :class:`racnn.data.object_boxes.ObjectBoxViews` items: what ``RACNN.forward`` takes, in order."""
    if isinstance(images, Tensor):
        return (images,)
    if isinstance(images, dict):
        return images["images"], images.get("source"), images.get("first_boxes")
    views = tuple(images)
    if len(views) != 2 or not all(isinstance(view, Tensor) for view in views):
        raise TypeError(f"a batch's images must be a tensor or a pair [input, source], got {len(views)} items")
    return views


Named = dict[str, Tensor]
LossFn = Callable[[nn.Module, tuple[Tensor, ...], Tensor, Named], tuple[Named, Named]]


def batch_extras(images: Tensor | Sequence[Tensor] | dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """What a batch holds besides the model's inputs and the labels, on the device: ``{"object_boxes": (B, 3)}``
    for the box-supervised APN pre-training (``train.pretrain_target=object``), else nothing."""
    if isinstance(images, dict) and "object_boxes" in images:
        return {"object_boxes": images["object_boxes"].to(device, non_blocking=True)}
    return {}


def run_epoch(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ctx: StepContext,
    compute_losses: LossFn,
) -> dict[str, float]:
    """One pass over ``loader``: ``compute_losses(net, inputs, targets, extras) -> (named losses, named logits)``,
    where ``inputs`` are the model's positional inputs (:func:`model_inputs`: the images, and the source if any) and
    ``extras`` the batch's other targets (:func:`batch_extras`).

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
        inputs, targets = ctx.to_device(images, targets)
        extras = batch_extras(images, ctx.device)
        step_now = (i + 1) % accum == 0 or i + 1 == batches
        with _no_sync(net, not step_now):
            with ctx.autocast():
                losses, logits = compute_losses(net, inputs, targets, extras)
            loss = sum(losses.values())
            values = _finite_values({"loss": loss, **losses}, f"{ctx.where}, step {i + 1}/{batches}")
            _backward(loss / accum, ctx.scaler)
        if step_now:
            _optimizer_step(optimizer, scheduler, ctx.scaler)
            steps += 1
        n = targets.shape[0]
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
