"""Forward + backward time of attention_crop against a per-sample reference, as the earlier ports crop.

The reference does what the public RA-CNN ports did, but keeps autograd: for each sample, in a Python loop,
build the boxcar mask on the image's whole pixel grid, mask the image, slice the box with integer indices and
resize it bilinearly (with torch.sigmoid, cheaper than the ports' hand-written exp). Its integer slice cuts the
boxes' gradient except through the mask, so it is not even the right gradient; it only sets a time to beat.
Times forward + backward of the op alone (a fixed random output gradient, no loss) and prints a markdown table
(median over repeats after warm-up).

    .venv/bin/python benchmarks/bench_crop.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from racnn.modeling.crop import attention_crop


def per_sample_crop(images: Tensor, boxes: Tensor, out_size: int, k: float = 10.0) -> Tensor:
    """The ports' crop: a Python loop over samples, the mask on the full pixel grid, an integer slice."""
    _, _, height, width = images.shape
    short = min(height, width)
    ys = torch.arange(height, dtype=images.dtype, device=images.device)[:, None].expand(height, width) + 0.5
    xs = torch.arange(width, dtype=images.dtype, device=images.device)[None, :].expand(height, width) + 0.5
    crops = []
    for image, (tx, ty, tl) in zip(images, boxes, strict=True):
        x1, x2 = tx * width - tl * short, tx * width + tl * short
        y1, y2 = ty * height - tl * short, ty * height + tl * short
        mask = (torch.sigmoid(k * (xs - x1)) - torch.sigmoid(k * (xs - x2))) * (
            torch.sigmoid(k * (ys - y1)) - torch.sigmoid(k * (ys - y2))
        )  # (H, W)
        left, right = max(int(x1), 0), min(int(x2), width)
        top, bottom = max(int(y1), 0), min(int(y2), height)
        region = (image * mask)[:, top:bottom, left:right]
        crops.append(F.interpolate(region[None], size=(out_size, out_size), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def time_forward_backward(fn: Callable[[], Tensor], tensors: list[Tensor], args: argparse.Namespace) -> float:
    """Median milliseconds of ``fn()`` plus its backward pass with a fixed random output gradient."""
    grad_output = torch.randn(fn().shape, generator=torch.Generator().manual_seed(args.seed))
    timings = []
    for i in range(args.warmup + args.repeats):
        for t in tensors:
            t.grad = None
        start = time.perf_counter()
        fn().backward(grad_output)
        if i >= args.warmup:
            timings.append(1e3 * (time.perf_counter() - start))
    return statistics.median(timings)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=448, help="input side")
    parser.add_argument("--out", type=int, default=224, help="output side")
    parser.add_argument("--k", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    tl = 0.15 + 0.3 * torch.rand(args.batch, generator=gen)  # sides 0.3 to 0.9 of the image
    centres = tl[:, None] + (1 - 2 * tl[:, None]) * torch.rand(args.batch, 2, generator=gen)
    boxes = torch.cat([centres, tl[:, None]], dim=1).requires_grad_()

    print(
        f"B={args.batch}, 3x{args.size}x{args.size} -> {args.out}x{args.out}, float32, forward + backward, "
        f"median of {args.repeats} after {args.warmup} warm-up, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| method | gradient w.r.t. | ms | reference / ours |")
    print("|---|---|---:|---:|")
    # Training: the images are data, only the boxes (the APN) need a gradient. Then both, as gradcheck does.
    for with_images in (False, True):
        images.requires_grad_(with_images)
        wrt = "images, boxes" if with_images else "boxes"
        ours = time_forward_backward(lambda: attention_crop(images, boxes, args.out, k=args.k), [images, boxes], args)
        reference = time_forward_backward(
            lambda: per_sample_crop(images, boxes, args.out, k=args.k), [images, boxes], args
        )
        print(f"| attention_crop (batched grid_sample, mask at sample points) | {wrt} | {ours:.1f} | 1.0 |")
        print(
            f"| per-sample reference (full-grid mask, slice, interpolate) | {wrt} | {reference:.1f} | "
            f"{reference / ours:.1f} |"
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
