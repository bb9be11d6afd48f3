"""The single-scale baseline that RA-CNN must beat: the same backbone, data, seed and optimiser.

Owns: :class:`SingleScaleBaseline` and :func:`train_baseline` (train, then test top-1/top-5).

May import: ``racnn.backbones``, ``racnn.config`` and the loaders, loop, precision, run_files and schedule of
``racnn.training``.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from racnn.config import Config, TrainConfig, resolve_device
from racnn.training.loaders import build_datasets, count_classes, make_eval_loader, make_train_loader
from racnn.training.loop import StepContext, run_epoch
from racnn.training.precision import autocast
from racnn.training.run_files import seed_everything
from racnn.training.schedule import build_optimizer, build_scheduler, steps_per_epoch


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
    seed_everything(cfg.train.seed)
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = count_classes(cfg)
    backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained)
    model = SingleScaleBaseline(backbone, cfg.model.num_classes).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_set, _, test_set = build_datasets(cfg, backbone.mean, backbone.std)  # trains on what RA-CNN trains on
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
