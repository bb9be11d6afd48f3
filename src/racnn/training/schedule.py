"""The phase schedule of RA-CNN (METHOD §4) and what each phase trains.

Owns: the order of the phases (warm-up, APN pre-training, ``rounds`` x (classification, APN), fusion), the
parameters each phase trains, freezing and train/eval modes (:func:`prepare_phase`), detaching the zoomed inputs
while the APNs are fixed (:func:`crops_detached`), and one fresh optimiser and learning-rate schedule per phase.

May import: torch, ``racnn.config``. Knows nothing of data, the loop or the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader

from racnn.config import ConfigError, PhaseConfig, TrainConfig

PHASES = ("warmup", "apn_pretrain", "cls", "apn", "fusion")


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


def run_position(schedule: list[tuple[str, PhaseConfig, int]], phase_index: int, epoch: int) -> tuple[int, int]:
    """``(epochs completed, epochs in the whole run)`` once ``epoch`` epochs of phase ``phase_index`` are done."""
    done = sum(phase.epochs for _, phase, _ in schedule[:phase_index]) + epoch
    return done, sum(phase.epochs for _, phase, _ in schedule)


def first_phase(schedule: list[tuple[str, PhaseConfig, int]], kind: str) -> int:
    """The index in ``schedule`` (see :func:`expand_schedule`) of its first phase of ``kind``."""
    for index, (phase_kind, _, _) in enumerate(schedule):
        if phase_kind == kind:
            return index
    raise ValueError(f"the schedule has no {kind!r} phase (its phases: {[k for k, _, _ in schedule]})")


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
def crops_detached(model: nn.Module) -> Iterator[None]:
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
