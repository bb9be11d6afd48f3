"""Accuracy of RA-CNN against a single-scale baseline on a CUB-layout data set.

Trains the single-scale baseline (same backbone, pre-trained weights, scale-1 input size, classification epochs
and seed) and RA-CNN with a recipe (default: cpu_lite0_cub50, EfficientNet-Lite0 ImageNet weights),
prints one table (baseline, scale 1, 2, 3, fused 1+2, 1+2+3, the parameter-free mean of the scales'
probabilities; top-1 and top-5; wall time) and, with --record, appends it to docs/BENCHMARKS.md with the
command, the machine and the date.

    python benchmarks/accuracy.py --data ../shared/data/cub50 --record
    python benchmarks/accuracy.py --data /data/CUB_200_2011 --config paper_vgg19_cub

The data path is an argument; any CUB_200_2011-layout folder works unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from racnn.config import load_config
from racnn.model import RACNN
from racnn.training import fit, train_baseline

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a CUB_200_2011-layout folder")
    parser.add_argument("--config", default="cpu_lite0_cub50", help="the recipe")
    parser.add_argument("--dataset", default="cub", help="data set layout name (default: cub)")
    parser.add_argument("--output-dir", default="runs/accuracy", help="where the runs go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    parser.add_argument("--record", action="store_true", help="append the table to docs/BENCHMARKS.md")
    return parser


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def table(rows: list[tuple[str, float, float, str]]) -> str:
    lines = ["| model | top-1 % | top-5 % | wall time |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {top1:.1f} | {top5:.1f} | {wall} |" for name, top1, top5, wall in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    overrides = [
        f"data.dataset={args.dataset}",
        f"data.root={args.data}",
        f"train.output_dir={args.output_dir}",
        f"train.seed={args.seed}",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    rows: list[tuple[str, float, float, str]] = []
    if not args.no_baseline:
        start = time.perf_counter()
        base = train_baseline(cfg)
        wall = f"{(time.perf_counter() - start) / 60:.1f} min"
        rows.append((f"baseline (1 scale, {base['epochs']} epochs)", 100 * base["top1"], 100 * base["top5"], wall))
    start = time.perf_counter()
    result = fit(cfg)
    wall = f"{(time.perf_counter() - start) / 60:.1f} min"
    m = result.metrics
    for s in range(1, cfg.model.num_scales + 1):
        rows.append((f"RA-CNN scale {s}", 100 * m[f"top1_s{s}"], 100 * m[f"top5_s{s}"], wall if s == 1 else ""))
    for n in range(2, cfg.model.num_scales + 1):
        head = RACNN.fusion_name(n)
        rows.append((f"RA-CNN fused {head}", 100 * m[f"top1_{head}"], 100 * m[f"top5_{head}"], ""))
    rows.append(("RA-CNN mean of the scales' probabilities", 100 * m["top1_avg"], 100 * m["top5_avg"], ""))

    text = table(rows)
    print(text)
    print(f"run folder: {result.run_dir}")
    if args.record:
        command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = (
            f"\n### {Path(args.data).name}, {Path(args.config).name}, seed {args.seed} ({stamp})\n\n"
            f"```\n{command}\n```\n\nMachine: {machine()}. {m['n_images']} test images; "
            f"RA-CNN run folder `{result.run_dir}`.\n\n{text}\n"
        )
        with open(ROOT / "docs" / "BENCHMARKS.md", "a") as f:
            f.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
