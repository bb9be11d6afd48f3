"""Train RA-CNN on the built-in synthetic fine-grained set and show that looking closer helps.

By default the set's fine-detail mode (recipe synthetic_fine): half of each class's detail is finer than scale 1's
64 px view can resolve, and the zooms read it from the 256 px images. Runs the whole schedule of the paper
(classification warm-up, APN pre-training, rounds of classification / APN alternation, fusion) with the tiny
backbone on the CPU in a few minutes, then a single-scale baseline with the same backbone, data, seed and number
of classification epochs. Prints one accuracy table (scale 1, 2, 3, the fusions and the baseline) and says where
it wrote the attention pictures, the training curves and the logs.
No download, no data on disk: the images are generated from a seed (docs/DATA.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from racnn.cli.errors import fail, fail_os
from racnn.cli.flags import add_amp, add_batch_size, add_device, add_workers
from racnn.config import Config, ConfigError, load_config

# The demo is the built-in synthetic_fine recipe (src/racnn/config/recipes/synthetic_fine.yaml): the tiny backbone,
# three scales, the paper's schedule, 800 training images of the synthetic set's fine-detail mode rendered at 256 px;
# scale 1 sees them at 64 px, where half of each class's detail is gone, and the zooms read the 256 px pixels.
# Every value is an ordinary config key (docs/TRAINING.md), so `racnn demo --set train.rounds=2` works as for
# `racnn train`; `racnn demo --config synthetic_tiny` runs the earlier demo, whose detail scale 1 can see.
DEMO_RECIPE = "synthetic_fine"
DEMO_SETTINGS = ["train.name=demo"]

# A reduced demo for tests and quick looks: fewer images and epochs, same code path.
SMALL_SETTINGS = [
    "data.synthetic_train=240",
    "data.synthetic_test=120",
    "train.warmup.epochs=1",
    "train.apn_pretrain.epochs=1",
    "train.cls.epochs=1",
    "train.fusion.epochs=1",
]


def demo_config(small: bool = False, overrides: list[str] | None = None, recipe: str = DEMO_RECIPE) -> Config:
    """The demo's configuration: ``recipe``, :data:`DEMO_SETTINGS` (+ :data:`SMALL_SETTINGS`), then ``overrides``."""
    settings = DEMO_SETTINGS + (SMALL_SETTINGS if small else []) + list(overrides or [])
    return load_config(recipe, settings)


def accuracy_rows(
    metrics: dict[str, Any], baseline: dict[str, Any], num_scales: int, trained: list[str] | None = None
) -> list[tuple[str, float, float]]:
    """Rows ``(name, top-1 %, top-5 %)``: each scale, each fusion, the mean of the scales' probabilities, then the
    single-scale baseline; heads not in ``trained`` (None: all) are left out."""
    from racnn.modeling.heads import is_trained
    from racnn.modeling.model import RACNN

    heads = [(f"scale {s}", f"s{s}") for s in range(1, num_scales + 1)]
    heads += [(f"fused {RACNN.fusion_name(n)}", RACNN.fusion_name(n)) for n in range(2, num_scales + 1)]
    heads.append(("mean of the scales", "avg"))
    rows = [(name, metrics[f"top1_{h}"], metrics[f"top5_{h}"]) for name, h in heads if is_trained(h, trained)]
    rows.append(("baseline (1 scale)", baseline["top1"], baseline["top5"]))
    return [(name, 100 * top1, 100 * top5) for name, top1, top5 in rows]


def format_table(rows: list[tuple[str, float, float]]) -> str:
    lines = ["| model | top-1 % | top-5 % |", "|---|---:|---:|"]
    lines += [f"| {name} | {top1:.1f} | {top5:.1f} |" for name, top1, top5 in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=DEMO_RECIPE, metavar="RECIPE",
        help=f"the recipe, a built-in name or a YAML file (default: {DEMO_RECIPE}; synthetic_tiny: the earlier demo, "
        "whose detail scale 1 can see)",
    )  # fmt: skip
    parser.add_argument("--output-dir", default="runs", help="parent folder of the run folder (default: runs)")
    add_device(parser, "auto")
    add_batch_size(parser, "training images per step: sets data.batch_size (default: the recipe's)", None)
    add_workers(parser, "data-loader worker processes: sets data.num_workers (default: the recipe's)", None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, data order and images (default: 0)")
    parser.add_argument("--small", action="store_true", help="a reduced demo (fewer images, epochs): a quick look")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-scale baseline")
    add_amp(parser)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, as for racnn train (repeatable), e.g. --set train.rounds=3",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from racnn.checkpoint import CheckpointError, CheckpointWriteError

    overrides = [
        f"train.output_dir={args.output_dir}",
        f"train.device={args.device}",
        f"train.seed={args.seed}",
        f"data.synthetic_seed={args.seed}",
        *([f"data.batch_size={args.batch_size}"] if args.batch_size is not None else []),
        *([f"data.num_workers={args.workers}"] if args.workers is not None else []),
        *(["train.progress=false"] if getattr(args, "verbosity", None) == "quiet" else []),
        f"train.amp={args.amp}",
        *args.overrides,
    ]
    try:
        cfg = demo_config(small=args.small, overrides=overrides, recipe=args.config)
    except ConfigError as e:
        return fail("racnn demo: ", e)
    try:
        return _run(args, cfg)
    except CheckpointWriteError as e:  # disk full, no permission: as racnn train
        return fail("racnn demo: ", e, code=1)
    except (ConfigError, CheckpointError) as e:
        return fail("racnn demo: ", e)
    except OSError as e:
        return fail_os("racnn demo: ", e)
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from racnn.training import fit, train_baseline

    start = time.perf_counter()
    result = fit(cfg)
    ra_seconds = time.perf_counter() - start
    if args.no_baseline:
        baseline = {"top1": float("nan"), "top5": float("nan")}
        base_seconds = 0.0
    else:
        start = time.perf_counter()
        baseline = train_baseline(cfg)
        base_seconds = time.perf_counter() - start

    rows = accuracy_rows(result.metrics, baseline, cfg.model.num_scales, result.trained_heads)
    table = format_table(rows)
    run_dir = Path(result.run_dir)
    (run_dir / "demo_table.md").write_text(table + "\n")
    summary = {"rows": rows, "ra_cnn_seconds": ra_seconds, "baseline_seconds": base_seconds}
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    m = result.metrics
    print()
    print(f"RA-CNN on the synthetic fine-grained set ({m.get('n_images', '?')} test images)")
    print(table)
    boxes = [
        f"scale {s}: side {100 * m[f'box_side_s{s}']:.0f} % of the image, "
        f"centre on the object {100 * m[f'box_in_object_s{s}']:.0f} %"
        for s in range(2, cfg.model.num_scales + 1)
        if f"box_in_object_s{s}" in m
    ]
    if boxes:
        print("attention boxes: " + "; ".join(boxes))
    print(f"time: RA-CNN {ra_seconds:.0f} s, baseline {base_seconds:.0f} s")
    print(f"wrote {run_dir}/: attention_round*.png (boxes and zoomed crops), curves.png, confusion.png, metrics.csv,")
    print("      demo_table.md, README.md, model.safetensors (try: racnn predict --checkpoint " + f"{run_dir} IMAGE)")
    return 0
