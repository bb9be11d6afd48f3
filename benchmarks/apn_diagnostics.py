"""Why does (or doesn't) the ranking loss move the APN? Measurements on a trained RA-CNN checkpoint.

Over ``--images`` augmented training images (what the APN phase sees), with the model as the APN phase runs it
(backbones and classifiers frozen, batch norm in eval mode):

- ``p_t`` per scale: the true-class probability the ranking loss reads (mean and quartiles), and the label-smoothing
  optimum ``1 - eps + eps / K`` every scale is trained toward;
- the hinge: how often ``p_t(s) - p_t(s+1) + margin > 0`` (the loss is active) per scale pair;
- the gradient: the norm of the ranking loss's gradient (``train.rank_coarser`` as set) reaching each APN's
  parameters, per batch (mean);
- the room: each box's side, and how far its centre can move with that side (``1 - side`` of the scale's input);
- the motion: the mean change of the boxes (centre, side; in units of the image) on the validation images after one
  APN epoch with the checkpoint's ``train.apn`` settings (or ``--set`` ones).

Prints one table; nothing is asserted and nothing is written.

    python benchmarks/apn_diagnostics.py --checkpoint runs/cpu_lite0_cub50/phase2_cls.pt
"""

from __future__ import annotations

import argparse
import copy
import sys
from statistics import mean

import torch

from racnn.checkpoint import load_model
from racnn.config import apply_overrides
from racnn.modeling.losses import ranking_losses
from racnn.training import (
    StepContext,
    build_optimizer,
    build_scheduler,
    build_split,
    make_eval_loader,
    make_train_loader,
    prepare_phase,
    steps_per_epoch,
    train_apn_epoch,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint taken before a ranking phase")
    parser.add_argument("--images", type=int, default=256, help="augmented training images to measure on")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-motion", action="store_true", help="skip the APN epoch (the slow part)")
    return parser


def measure_gradients(model, cfg, images: int) -> dict[str, list[float]]:
    """p_t per scale, hinge activity per pair and APN gradient norms, on augmented training images."""
    train_set = build_split(cfg, "train", list(model.mean), list(model.std))
    loader, sampler = make_train_loader(train_set, cfg.data.batch_size, seed=cfg.train.seed)
    sampler.set_epoch(0)
    prepare_phase(model, "apn")
    stats: dict[str, list[float]] = {}
    seen = 0
    for batch, targets in loader:
        if seen >= images:
            break
        model.zero_grad(set_to_none=True)
        out = model(batch)
        p_true = [z.softmax(-1).gather(1, targets[:, None]).squeeze(1) for z in out.logits]
        for s, p in enumerate(p_true):
            stats.setdefault(f"p_t s{s + 1}", []).extend(p.tolist())
        for s in range(len(p_true) - 1):
            active = (p_true[s] - p_true[s + 1] + cfg.train.margin > 0).float()
            stats.setdefault(f"hinge active {s + 1}>{s + 2}", []).extend(active.tolist())
        fixed = cfg.train.rank_coarser == "fixed"
        sum(ranking_losses(out.logits, targets, margin=cfg.train.margin, coarser_fixed=fixed).values()).backward()
        for s, apn in enumerate(model.apns):
            norm = torch.sqrt(sum((p.grad**2).sum() for p in apn.parameters() if p.grad is not None))
            stats.setdefault(f"grad norm APN {s + 1}", []).append(float(norm))
        for s, box in enumerate(out.boxes):
            side = (2 * box[:, 2]).detach()
            stats.setdefault(f"box side s{s + 2}", []).extend(side.tolist())
            stats.setdefault(f"centre room s{s + 2}", []).extend((1 - side).tolist())
        seen += batch.shape[0]
    model.zero_grad(set_to_none=True)
    return stats


@torch.no_grad()
def val_boxes(model, loader) -> list[torch.Tensor]:
    model.eval()
    boxes = None
    for batch, _, _ in loader:
        out = model(batch).boxes_in_image
        boxes = (
            [b.clone() for b in out] if boxes is None else [torch.cat([a, b]) for a, b in zip(boxes, out, strict=True)]
        )
    return boxes


def measure_motion(model, cfg) -> dict[str, float]:
    """Mean box change on the validation images over one APN epoch with ``cfg.train.apn``."""
    split = "val" if cfg.data.val_fraction > 0 else "test"
    loader = make_eval_loader(build_split(cfg, split, list(model.mean), list(model.std)), cfg.data.eval_batch_size)
    before = val_boxes(model, loader)
    moved = copy.deepcopy(model)
    train_loader, sampler = make_train_loader(
        build_split(cfg, "train", list(model.mean), list(model.std)), cfg.data.batch_size, seed=cfg.train.seed
    )
    sampler.set_epoch(0)
    params = prepare_phase(moved, "apn")
    optimizer = build_optimizer(params, cfg.train.apn)
    scheduler = build_scheduler(optimizer, cfg.train.apn, steps_per_epoch(train_loader, cfg.train)[1])
    stats = train_apn_epoch(moved, train_loader, optimizer, scheduler, StepContext(train=cfg.train, where="apn"))
    after = val_boxes(moved, loader)
    result = {"rank loss during the epoch": stats["loss"]}
    for s, (a, b) in enumerate(zip(before, after, strict=True)):
        result[f"centre motion s{s + 2}"] = float((b[:, :2] - a[:, :2]).norm(dim=1).mean())
        result[f"side change s{s + 2}"] = float((2 * (b[:, 2] - a[:, 2])).abs().mean())
    return result


def quartiles(values: list[float]) -> str:
    v = torch.tensor(values)
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return f"{mean(values):.4g} | {q[0]:.3g} / {q[1]:.3g} / {q[2]:.3g}"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    model, cfg, _ = load_model(args.checkpoint)
    cfg = apply_overrides(cfg, args.overrides)
    torch.manual_seed(cfg.train.seed)
    eps, classes = cfg.train.label_smoothing, cfg.model.num_classes
    print(f"{args.checkpoint}: {classes} classes, label smoothing {eps} (p_t optimum {1 - eps + eps / classes:.3f}), "
          f"margin {cfg.train.margin}, min_side {cfg.model.min_side}, APN phase {cfg.train.apn}")  # fmt: skip
    print("| quantity | mean | quartiles |\n|---|---:|---:|")
    for name, values in measure_gradients(model, cfg, args.images).items():
        print(f"| {name} | {quartiles(values)} |")
    if not args.no_motion:
        for name, value in measure_motion(model, cfg).items():
            print(f"| {name} | {value:.4g} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
