"""Does the attention depend on the image? The spread of each APN's boxes over a split's images.

For each checkpoint (a run's model.safetensors, best.pt or last.pt), each zoomed scale and each region: the mean box
(centre and side, in units of the image, scale 1's input) and its standard deviation over the images of
``--split`` (centre-cropped, as evaluation sees them). A spread of zero means the APN proposes the same box for every
image: a learnt fixed zoom, not attention. Where the data set has object boxes (CUB's ``bounding_boxes.txt``), a row
``objects`` gives their own spread in the same units (side: the square root of the box's area), the yardstick: an
attention that follows the objects spreads about as much. Prints one table; nothing is asserted and nothing is
written.

    python benchmarks/box_spread.py runs/cpu_lite0_cub50/model.safetensors runs/other/best.pt --split val
"""

from __future__ import annotations

import argparse
import sys

import torch

from diagnosed_split import add_data_options, load_diagnosed
from racnn.modeling.regions import as_regions
from racnn.training import build_split, make_eval_loader, object_boxes_in_input
from racnn.training.loop import model_inputs

HEADER = "| run | scale | region | centre x | centre y | side | std centre x | std centre y | std side | images |"
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="run folders or model files")
    add_data_options(parser)
    return parser


@torch.no_grad()
def image_boxes(model, loader, limit: int) -> list[torch.Tensor]:
    """Per zoomed scale, the ``(N, R, 3)`` boxes ``(cx, cy, half side)`` in image units, over the loader's images."""
    per_scale: list[list[torch.Tensor]] = []
    seen = 0
    for batch in loader:
        out = model(*model_inputs(batch[0]))  # the images, the source view, the oracle's object boxes
        for s, boxes in enumerate(out.boxes_in_image):
            if len(per_scale) <= s:
                per_scale.append([])
            per_scale[s].append(as_regions(boxes).float())
        seen += len(batch[1])
        if limit and seen >= limit:
            break
    return [torch.cat(chunks)[: limit or None] for chunks in per_scale]


def rows(name: str, boxes: list[torch.Tensor]) -> list[str]:
    lines = []
    for s, scale in enumerate(boxes, start=2):
        for r in range(scale.shape[1]):
            region = scale[:, r] * torch.tensor([1.0, 1.0, 2.0])  # half side -> side
            m, sd = region.mean(0), region.std(0) if len(region) > 1 else torch.zeros(3)
            cells = [f"{v:.3f}" for v in m] + [f"{v:.4f}" for v in sd]
            lines.append(f"| {name} | {s} | {r + 1} | " + " | ".join(cells) + f" | {len(region)} |")
    return lines


def object_row(name: str, data, cfg, limit: int) -> list[str]:
    """The objects' own spread over the same images, as a row of the table (none without object boxes)."""
    boxes = object_boxes_in_input(data, cfg.data.source_size or cfg.model.input_size, cfg.data.resize_ratio)
    if boxes is None:
        return []
    boxes = boxes[: limit or None]
    boxes = boxes[~torch.isnan(boxes).any(-1)].double()
    if len(boxes) == 0:
        return []
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, size], dim=1)
    m, sd = centre.mean(0), centre.std(0) if len(centre) > 1 else torch.zeros(3)
    cells = [f"{v:.3f}" for v in m] + [f"{v:.4f}" for v in sd]
    return [f"| {name} | objects | - | " + " | ".join(cells) + f" | {len(boxes)} |"]


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    print(HEADER + "\n" + RULE, flush=True)
    for path in args.checkpoints:
        model, cfg, source = load_diagnosed(path, args.overrides)
        data = build_split(cfg, args.split, list(model.mean), list(model.std))
        loader = make_eval_loader(data, args.batch_size, num_workers=0)
        name = source.parent.name if source.name in ("model.safetensors", "best.pt", "last.pt") else source.name
        for line in rows(name, image_boxes(model, loader, args.images)) + object_row(name, data, cfg, args.images):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
