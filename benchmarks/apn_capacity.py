"""Can an APN read the object's place and size from its map? Fresh APNs fitted to given boxes, scored on another split.

A diagnostic for the attention on whole photographs: the APN trained by the recipe proposes a box whose side does
not grow with the bird. Either its target does not say how big the bird is, or the map it reads cannot tell. Here,
with a trained checkpoint's scale-1 network frozen, the maps of every image of ``--train-split`` and
``--score-split`` are computed once (centre-cropped, as evaluation sees them); then for each map and each target a
fresh APN of the checkpoint's shape (``model.apn_channels``, ``model.apn_hidden``, ``--pool``) is fitted to the
targets of the train images (horizontal flips of the cached maps as the only augmentation) and its boxes on the
score images are compared with the annotated object boxes (:mod:`racnn.training.box_scores`), beside a constant box
(the targets' mean) and the checkpoint's own first APN.

Maps (``--maps``, comma-separated): ``glance`` is what the first APN reads (scale 1's last conv map of its input,
5 x 5 for a Lite0 at 160 px); ``last@N`` the same network's last map of the photo read at N px (the source view,
resized: 14 x 14 at 448); ``stage4@N`` an EfficientNet's stride-16 map (its fifth block stage, 112 channels for a
Lite0) of the photo at N px. Targets (``--targets``): ``object``, the object box made square (a box-supervised APN:
what the map can tell at best); ``cam_extent@N``, the square around where scale 1's class activation map of the
photo at N px is at least ``--threshold`` of its range (a weakly supervised target that follows the bird).

Prints one table; nothing is asserted or written. Score on val (or train), never on test.

    python benchmarks/apn_capacity.py runs/cpu_lite0_cub_whole --set data.root=../shared/data/cub25_whole
"""

from __future__ import annotations

import argparse
import sys

import torch

from diagnosed_split import add_data_options, load_diagnosed, photo_at, view_and_source
from racnn.data.object_boxes import square_box
from racnn.modeling.crop import boxes_to_xyxy
from racnn.modeling.losses import apn_pretrain_loss
from racnn.modeling.model import APN
from racnn.training import build_split, make_eval_loader, object_boxes_in_input
from racnn.training.attention_targets import class_activation_map, extent_boxes
from racnn.training.box_scores import box_scores, box_sums, object_scores, object_sums, xyxy_iou

HEADER = "| map | target | fit on train (IoU) | IoU | covers object | side | side corr | std centre x | std centre y |"
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run folder or a model file (its scale-1 classifier trained)")
    parser.add_argument("--maps", default="glance,last@448,stage4@448", help="the APN's input maps (see above)")
    parser.add_argument("--targets", default="object,cam_extent@448", help="what the APNs are fitted to")
    parser.add_argument("--threshold", type=float, default=0.3, help="cam_extent's fraction of the CAM's range")
    parser.add_argument("--pool", type=int, default=0, help="the APN's pooled size (0: the checkpoint's)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-split", default="train", choices=("train", "val"))
    parser.add_argument("--score-split", default="val", choices=("train", "val"))
    add_data_options(parser, split=False)
    return parser


def stage_map(backbone, images: torch.Tensor, stage: int) -> torch.Tensor:
    """An EfficientNet body's map after block stage ``stage`` (timm's conv_stem, bn1, blocks layout)."""
    body = backbone.body
    if not hasattr(body, "blocks"):
        raise SystemExit(f"stage maps need an EfficientNet body (conv_stem, bn1, blocks), got {type(body).__name__}")
    x = body.bn1(body.conv_stem(images))
    return body.blocks[: stage + 1](x)


@torch.no_grad()
def cache(model, cfg, split: str, maps: list[str], targets: list[str], threshold: float):
    """Every map of ``maps`` and target of ``targets`` of the split's images, with their object boxes."""
    data = build_split(cfg, split, list(model.mean), list(model.std))
    objects = object_boxes_in_input(data, cfg.model.input_size, cfg.data.resize_ratio)
    if objects is None:
        raise SystemExit(f"{cfg.data.dataset} at {cfg.data.root} has no object boxes")
    backbone, weight, min_side = model.backbones[0], model.classifiers[0].weight, model.apns[0].min_side
    sizes = {int(name.partition("@")[2]) for name in [*maps, *targets] if name.startswith(("last@", "cam_extent@"))}
    found: dict[str, list[torch.Tensor]] = {name: [] for name in [*maps, *targets, "apn"]}
    for images, labels, *_ in make_eval_loader(data, 32, num_workers=0):
        view, source = view_and_source(images)
        glance = backbone(view).float()
        last = {size: backbone(photo_at(view, source, size)).float() for size in sizes}  # once per batch
        found["apn"].append(model.apns[0](glance).float())
        for name in maps:
            kind, _, size = name.partition("@")
            if kind == "glance":
                found[name].append(glance)
            elif kind == "last":
                found[name].append(last[int(size)])
            elif kind.startswith("stage"):
                found[name].append(stage_map(backbone, photo_at(view, source, int(size)), int(kind[5:])).float())
            else:
                raise SystemExit(f"unknown map {name!r}: glance, last@N or stageK@N")
        for name in targets:
            if name.startswith("cam_extent@"):
                cam = class_activation_map(last[int(name.partition("@")[2])], weight, labels)
                found[name].append(extent_boxes(cam, threshold, min_side))
            elif name != "object":
                raise SystemExit(f"unknown target {name!r}: object or cam_extent@N")
    cached = {name: torch.cat(parts) for name, parts in found.items() if parts}
    if "object" in targets:
        known = ~torch.isnan(objects).any(1)
        cached["object"] = torch.where(known[:, None], square_box(objects.nan_to_num(0.5), min_side), 0.5)
    return cached, objects


def fit_apn(maps: torch.Tensor, goals: torch.Tensor, cfg, pool: int, epochs: int, lr: float, seed: int) -> APN:
    """A fresh APN of the checkpoint's shape (``cfg.model``) fitted to ``goals`` (``(N, 3)``) from ``maps``, flips as
    augmentation."""
    torch.manual_seed(seed)
    m = cfg.model
    apn = APN(maps.shape[1], pool=pool or m.apn_pool, hidden=m.apn_hidden, min_side=m.min_side,
              channels=m.apn_channels)  # fmt: skip
    optimizer = torch.optim.AdamW(apn.parameters(), lr=lr, weight_decay=1e-4)
    flipped_goals = goals * goals.new_tensor([-1.0, 1.0, 1.0]) + goals.new_tensor([1.0, 0.0, 0.0])
    for _ in range(epochs):
        for index in torch.randperm(len(maps)).split(32):
            flip = torch.rand(len(index)) < 0.5
            batch = torch.where(flip[:, None, None, None], maps[index].flip(-1), maps[index])
            goal = torch.where(flip[:, None], flipped_goals[index], goals[index])
            loss = apn_pretrain_loss(apn(batch), goal)["apn_pre"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return apn.eval()


def row(label: str, fit: float, boxes: torch.Tensor, objects: torch.Tensor) -> str:
    scores = box_scores(box_sums(boxes, objects), "x")
    columns = ("iou", "covers_object", "side", "side_corr", "centre_std_x", "centre_std_y")
    return f"| {label} | {fit:.3f} | " + " | ".join(f"{scores[f'box_{c}_x']:.3f}" for c in columns) + " |"


def iou_with(boxes: torch.Tensor, goals: torch.Tensor) -> float:
    """The mean IoU of two sets of square boxes ``(cx, cy, half side)``."""
    return float(xyxy_iou(boxes_to_xyxy(boxes.float()), boxes_to_xyxy(goals.float())).mean())


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    maps, targets = [m for m in args.maps.split(",") if m], [t for t in args.targets.split(",") if t]
    model, cfg, _ = load_diagnosed(args.checkpoint, args.overrides)
    train, _ = cache(model, cfg, args.train_split, maps, targets, args.threshold)
    score, objects = cache(model, cfg, args.score_split, maps, targets, args.threshold)
    print(f"fitted on {args.train_split} ({len(train['apn'])} images), scored on {args.score_split} "
          f"({len(objects)} images)\n" + HEADER + "\n" + RULE, flush=True)  # fmt: skip
    print(row("checkpoint's APN | its own", float("nan"), score["apn"], objects))
    for target in targets:
        mean = train[target].mean(0, keepdim=True)
        fit = iou_with(mean.expand_as(train[target]), train[target])
        print(row(f"none | {target}: the mean box", fit, mean.expand(len(objects), 3), objects))
        for name in maps:
            apn = fit_apn(train[name], train[target], cfg, args.pool, args.epochs, args.lr, args.seed)
            with torch.no_grad():
                fit = iou_with(apn(train[name]), train[target])
                print(row(f"{name} | {target}", fit, apn(score[name]), objects), flush=True)
    spread = object_scores(object_sums(objects))
    print(f"| objects | | | 1 | 1 | {spread['object_size_mean']:.3f} | 1 | {spread['object_centre_std_x']:.3f} | "
          f"{spread['object_centre_std_y']:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
