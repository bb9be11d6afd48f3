"""Where the boxes go, drawn without the photographs: scale 2's box against the annotated object, image by image.

For each checkpoint (a run folder or model file; one row of the picture each), over the images of ``--split``
(centre-cropped, as evaluation sees them), three scatter panels: scale 2's box side against the object's size (the
square root of its box's area, as :mod:`racnn.training.box_scores` measures it), and the box's centre against the
object's, in x and in y; all in units of scale 1's input. A box that follows the object lies along the diagonal; a
fixed zoom is a horizontal line. Each panel's title gives the correlation. Only the boxes are drawn, so the picture
can go where the data set's photographs may not (CUB-200-2011's are for non-commercial research). Writes one PNG;
nothing is asserted.

    python benchmarks/box_picture.py runs/cpu_lite0_cub_whole runs/other --names "RA-CNN,other" --split val \\
        --set data.root=../shared/data/cub25_whole --out boxes.png
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import torch

from box_spread import image_boxes
from diagnosed_split import add_data_options, load_diagnosed
from racnn.training import build_split, make_eval_loader, object_boxes_in_input

PANELS = ("side against object size", "centre x against object's", "centre y against object's")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="run folders or model files")
    parser.add_argument("--names", default="", help="one label per checkpoint, comma-separated (default: folder names)")
    parser.add_argument("--out", default="boxes.png", help="the PNG to write")
    add_data_options(parser)
    return parser


def box_and_object(boxes: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3)`` rows ``(side, centre x, centre y)`` of the boxes ``(cx, cy, half side)`` and of the objects
    (``(N, 4)`` xyxy; side: the square root of the area), where the object is known."""
    known = ~torch.isnan(objects).any(-1)
    boxes, objects = boxes[known].double(), objects[known].double()
    size = ((objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])).clamp(min=0).sqrt()
    centre = (objects[:, :2] + objects[:, 2:]) / 2
    box_rows = torch.stack([2 * boxes[:, 2], boxes[:, 0], boxes[:, 1]], dim=1)
    return box_rows, torch.cat([size[:, None], centre], dim=1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's correlation; NaN where either is constant (a fixed zoom's side)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def draw(rows: list[tuple[str, torch.Tensor, torch.Tensor]], title: str):
    """One row of three scatter panels per ``(name, box rows, object rows)``; returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.3 * len(rows) + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for (name, box, obj), row in zip(rows, axes, strict=True):
        for k, ax in enumerate(row):
            ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--", zorder=0)  # the box that follows the object
            ax.scatter(obj[:, k].numpy(), box[:, k].numpy(), s=6, alpha=0.45, color="#d62728", lw=0)
            ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
            ax.set_title(f"{PANELS[k]} (r = {correlation(box[:, k], obj[:, k]):.2f})", fontsize=8)
            ax.set_xlabel("object (annotated box)", fontsize=8)
            ax.set_ylabel(("\n".join(textwrap.wrap(name, 34)) + "\n\n" if k == 0 else "") + "scale 2's box", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else []
    if names and len(names) != len(args.checkpoints):
        raise SystemExit(f"--names gives {len(names)} labels for {len(args.checkpoints)} checkpoints")
    rows, images = [], 0
    for i, path in enumerate(args.checkpoints):
        model, cfg, source = load_diagnosed(path, args.overrides)
        data = build_split(cfg, args.split, list(model.mean), list(model.std))
        objects = object_boxes_in_input(data, cfg.model.input_size, cfg.data.resize_ratio)
        if objects is None:
            print(f"{cfg.data.dataset} at {cfg.data.root} has no object boxes: nothing to draw", file=sys.stderr)
            return 2
        boxes = image_boxes(model, make_eval_loader(data, args.batch_size, num_workers=0), args.images)[0][:, 0]
        box, obj = box_and_object(boxes, objects[: len(boxes)].float())
        name = names[i] if names else (source.parent.name if source.suffix in (".safetensors", ".pt") else source.name)
        rows.append((name, box, obj))
        images = len(box)
        scores = ", ".join(f"{PANELS[k]} {correlation(box[:, k], obj[:, k]):.3f}" for k in range(3))
        offset = (box[:, 1:] - obj[:, 1:]).mean(0)  # the box's centre less the object's (y grows downwards)
        print(f"{name}: {len(box)} images; r: {scores}; mean centre offset x {offset[0]:+.3f}, y {offset[1]:+.3f}")
    fig = draw(rows, f"Scale 2's box against the annotated object, {images} {args.split} images")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
