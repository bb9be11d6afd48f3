"""Data loading throughput: JPEG decoding + paper-style train augmentation through a DataLoader.

    python benchmarks/bench_data.py --data ../shared/data/cub50 --size 448 --workers 2 --batches 20

Prints a markdown table (workers, batch size, images/s). The first batch of each configuration (worker start-up)
is not timed.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.data import DataLoader

from racnn.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, build_transforms


def measure(dataset, workers: int, batch_size: int, batches: int, seed: int = 0) -> float:
    """Images per second over ``batches`` batches, after one untimed warm-up batch."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if len(loader) < batches + 1:
        raise SystemExit(f"need {batches + 1} batches of {batch_size}, the data set gives {len(loader)}")
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    elapsed = time.perf_counter() - start
    assert images.shape[-2:] == dataset[0][0].shape[-2:]
    del iterator
    return batches * batch_size / elapsed


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="data set root")
    parser.add_argument("--dataset", default="cub", help="data set name (default: cub)")
    parser.add_argument("--size", type=int, default=448, help="input size (crop side)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers (several allowed)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16], help="batch sizes (several allowed)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    return parser


def main(args: argparse.Namespace) -> int:
    transform = build_transforms("train", args.size, IMAGENET_MEAN, IMAGENET_STD)
    dataset = build_dataset(args.dataset, args.data, "train", transform=transform)
    print(
        f"{args.dataset} train: {len(dataset)} images, input {args.size}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, main-process threads {torch.get_num_threads()}\n"
    )
    print("| workers | batch size | images/s |")
    print("|---:|---:|---:|")
    for workers in args.workers:
        for batch_size in args.batch_size:
            rate = measure(dataset, workers, batch_size, args.batches)
            print(f"| {workers} | {batch_size} | {rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
