"""Which APN pre-training target follows the object? Each target's box, and the first APN's own, against the boxes.

On a trained checkpoint (a run folder, its model.safetensors or a phase checkpoint: the scale-1 classifier must be
trained, as after the warm-up), over the images of ``--split`` (centre-cropped, as evaluation sees them), the box
each pre-training target of :mod:`racnn.training.attention_targets` would ask of scale 2 is scored against the
annotated object box like the attention itself (:mod:`racnn.training.box_scores`): the IoU, the share of the object
inside the box and of the box on the object, how often the box's centre is on the object, the mean side, the
correlation between the side and the object's size, and the centres' spread beside the objects' own. Rows:

- ``channels`` and ``cam``: the window of ``train.pretrain_side`` where the map's channel mean (the paper's target)
  or the class activation map is highest;
- ``cam_extent t=T`` for each ``--thresholds`` value: the square around where the CAM is at least ``T`` of its range;
- ``channels_extent t=T``: the same square on the map's channel mean (where the network responds, any class);
- with ``--cam-size N``, both extents on the map of the scale-1 network reading the photo at N px (the source
  view, resized): a finer map of the same classifier (a Lite0 at 160 px has a 5 x 5 map, at 448 px 14 x 14);
- with ``--zoom-sides``, ``zoom_gain``: of the squares of those sides around the centre of ``cam_extent t=0.5``
  (moved inside the image), the one whose zoom scale 2's classifier is most sure of the true class (the ranking
  loss's own signal, :func:`racnn.training.attention_targets.zoom_gain_targets`; tried as the APN phase's target
  and not kept, docs/BENCHMARKS.md);
- ``apn``: the first APN's box as the checkpoint proposes it.

The targets read the true class (they are training targets). Prints one table; nothing is asserted or written.
Choose on ``--split val`` (or train), never on test.

    python benchmarks/pretrain_targets.py runs/cpu_lite0_cub_whole --set data.root=../shared/data/cub25_whole
"""

from __future__ import annotations

import argparse
import sys

import torch

from diagnosed_split import add_data_options, load_diagnosed, photo_at, view_and_source
from racnn.modeling.losses import apn_targets
from racnn.training import build_split, make_eval_loader, object_boxes_in_input
from racnn.training.attention_targets import class_activation_map, extent_boxes, zoom_gain_targets
from racnn.training.box_scores import box_scores, box_sums, object_scores, object_sums

HEADER = "| target | IoU | covers object | on object | centre in | side | side corr | std centre x | std centre y |"
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
COLUMNS = ("iou", "covers_object", "on_object", "in_object", "side", "side_corr", "centre_std_x", "centre_std_y")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run folder or a model file")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6", help="cam_extent thresholds (comma-separated)")
    parser.add_argument("--cam-size", type=int, default=0, help="also the CAM of scale 1 reading the photo at N px")
    parser.add_argument("--zoom-sides", default="", help="zoom_gain's candidate sides (comma-separated; none: off)")
    add_data_options(parser)
    return parser


@torch.no_grad()
def target_boxes(model, cfg, view, source, labels, thresholds, cam_size: int, sides) -> dict[str, torch.Tensor]:
    """Each target's ``(B, 3)`` box ``(cx, cy, half side)`` for one batch, and the first APN's (scale 1 alone: the
    zoomed scales are not needed, and its box is already in the image's coordinates)."""
    feature_map, weight = model.backbones[0](view).float(), model.classifiers[0].weight
    side, min_side = cfg.train.pretrain_side, model.apns[0].min_side
    cam = class_activation_map(feature_map, weight, labels)
    boxes = {"channels": apn_targets(feature_map, side=side), "cam": apn_targets(cam[:, None], side=side)}
    boxes.update({f"cam_extent t={t:g}": extent_boxes(cam, t, min_side) for t in thresholds})
    boxes.update({f"channels_extent t={t:g}": extent_boxes(feature_map.mean(1), t, min_side) for t in thresholds})
    if cam_size:
        fine_map = model.backbones[0](photo_at(view, source, cam_size)).float()  # the photo at cam_size px
        fine = class_activation_map(fine_map, weight, labels)
        boxes.update({f"cam_extent t={t:g} at {cam_size} px": extent_boxes(fine, t, min_side) for t in thresholds})
        boxes.update({f"channels_extent t={t:g} at {cam_size} px": extent_boxes(fine_map.mean(1), t, min_side)
                      for t in thresholds})  # fmt: skip
    if sides:
        around = extent_boxes(cam, 0.5, min_side)  # the candidates are centred on it
        boxes["zoom_gain"] = zoom_gain_targets(model, view, source, [around], 0, labels, sides)
    boxes["apn"] = model.apns[0](feature_map).float()
    return boxes


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    sides = [float(s) for s in args.zoom_sides.split(",") if s]
    model, cfg, _ = load_diagnosed(args.checkpoint, args.overrides)
    data = build_split(cfg, args.split, list(model.mean), list(model.std))
    objects = object_boxes_in_input(data, cfg.model.input_size, cfg.data.resize_ratio)
    if objects is None:
        print(f"{cfg.data.dataset} at {cfg.data.root} has no object boxes: nothing to score against", file=sys.stderr)
        return 2
    loader = make_eval_loader(data, args.batch_size, num_workers=0)
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for images, labels, *_ in loader:
        view, source = view_and_source(images)
        batch_objects = objects[seen : seen + len(labels)]
        for name, boxes in target_boxes(model, cfg, view, source, labels, thresholds, args.cam_size, sides).items():
            sums[name] = sums.get(name, 0) + box_sums(boxes, batch_objects)
        seen += len(labels)
        if args.images and seen >= args.images:
            break
    print(HEADER + "\n" + RULE, flush=True)
    for name, total in sums.items():
        scores = box_scores(total, "x")
        print(f"| {name} | " + " | ".join(f"{scores[f'box_{c}_x']:.3f}" for c in COLUMNS) + " |")
    spread = object_scores(object_sums(objects[:seen]))
    print(f"| objects | 1 | 1 | 1 | 1 | {spread['object_size_mean']:.3f} | 1 | {spread['object_centre_std_x']:.3f} | "
          f"{spread['object_centre_std_y']:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
