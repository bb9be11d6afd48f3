"""The single-scale baseline that RA-CNN must beat: the same backbone, data, seed and optimiser.

Owns: :class:`SingleScaleBaseline` and :func:`train_baseline` (train, then test top-1/top-5).

May import: ``racnn.modeling.backbones``, ``racnn.config``, ``racnn.precision`` and the loaders, loop, precision,
run_files and schedule of ``racnn.training``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from racnn.config import Config, TrainConfig, resolve_device
from racnn.precision import autocast, choose_precision
from racnn.training.loaders import build_datasets, count_classes, make_eval_loader, make_train_loader
from racnn.training.loop import StepContext, model_inputs, run_epoch
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


def train_baseline(cfg: Config, keep_probs: bool = False) -> dict[str, Any]:
    """Train and test the single-scale baseline of ``cfg`` (single process).

    Same backbone and pre-trained weights, data, seed, precision switches and the optimiser of the ``warmup``
    phase (of ``cls`` without a warm-up), for as many epochs as RA-CNN's classification phases have
    (``warmup + rounds * cls``), one schedule over all of them.

    It trains on the images RA-CNN trains on (train without the val split) and has no model selection: the last
    model is tested, once.

    Args:
        cfg: the RA-CNN configuration whose baseline to train.
        keep_probs: also return the softmax probabilities, ``(N, K)`` per split, for ensembles.

    Returns:
        ``{"top1", "top5", "n_images", "epochs"}`` on the test set, ``val_top1`` / ``val_top5`` where there is a val
        split; with ``keep_probs``, ``probs`` and ``targets``: ``{"val": ..., "test": ...}``.
    """
    from racnn.modeling.backbones import build_backbone, check_input_size

    cfg = copy.deepcopy(cfg)
    device = resolve_device(cfg.train.device)
    precision = choose_precision(cfg.train.amp, device, cfg.train.channels_last)  # as RA-CNN's run decides
    cfg.train = replace(cfg.train, amp=precision.amp, channels_last=precision.channels_last)
    seed_everything(cfg.train.seed)
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = count_classes(cfg)
    backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained, cfg.model.backbone_kwargs)
    check_input_size(backbone, cfg.model.backbone, cfg.model.input_size)
    model = SingleScaleBaseline(backbone, cfg.model.num_classes).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_set, val_set, test_set = build_datasets(cfg, backbone.mean, backbone.std)  # what RA-CNN trains on
    loader, sampler = make_train_loader(
        train_set, cfg.data.batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers
    )
    epochs = cfg.train.warmup.epochs + cfg.train.rounds * cfg.train.cls.epochs
    # The optimiser of RA-CNN's main classification phase: the warm-up when there is one, else the rounds'.
    phase = replace(cfg.train.warmup if cfg.train.warmup.epochs > 0 else cfg.train.cls, epochs=epochs)
    optimizer = build_optimizer(list(model.parameters()), phase)
    scheduler = build_scheduler(optimizer, phase, steps_per_epoch(loader, cfg.train)[1] * epochs)
    smoothing = cfg.train.label_smoothing

    def losses(net, inputs, targets, _extras):
        logits = net(inputs[0])  # scale 1's input; a source view (data.source_size) is not the baseline's
        return {"cls": F.cross_entropy(logits, targets, label_smoothing=smoothing)}, {"s1": logits}

    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        ctx = StepContext(device, cfg.train, None, f"baseline, epoch {epoch + 1}/{epochs}", cfg.train.progress)
        run_epoch(model, loader, optimizer, scheduler, ctx, losses)
    result: dict[str, Any] = {"epochs": epochs, "probs": {}, "targets": {}}
    for split, data in (("val", val_set), ("test", test_set)):
        if data is None:
            continue
        loader = make_eval_loader(data, cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
        probs, targets = _predict_probs(model, loader, device, cfg.train)
        result["probs"][split], result["targets"][split] = probs, targets
        prefix = "" if split == "test" else "val_"
        result.update({f"{prefix}{k}": v for k, v in topk_accuracy(probs, targets).items()})
    if not keep_probs:
        del result["probs"], result["targets"]
    return result


def topk_accuracy(probs: Tensor, targets: Tensor) -> dict[str, float]:
    """``{"top1", "top5", "n_images"}`` of ``(N, K)`` scores against ``(N,)`` labels (top-5 capped at K)."""
    top5 = probs.topk(min(5, probs.shape[-1]), dim=-1).indices == targets[:, None]
    n = targets.shape[0]
    return {"top1": top5[:, 0].sum().item() / n, "top5": top5.any(-1).sum().item() / n, "n_images": n}


@torch.no_grad()
def _predict_probs(
    model: nn.Module, loader: DataLoader, device: torch.device, train: TrainConfig
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities ``(N, K)`` and labels ``(N,)`` of every image of ``loader``, in order, on the CPU."""
    model.eval()
    probs, labels = [], []
    for images, targets, _ in loader:
        images = model_inputs(images)[0].to(device)
        if train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, train.amp):
            probs.append(model(images).float().softmax(-1).cpu())
        labels.append(targets)
    return torch.cat(probs), torch.cat(labels)
