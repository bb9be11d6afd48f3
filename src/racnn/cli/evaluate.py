"""Evaluate a checkpoint on a data split: per-scale and fused accuracy, attention boxes, confusion matrix.

Prints a table with one row per head (scale 1, 2, 3, the fusions 1+2, 1+2+3, and the mean of the per-scale
probabilities) with top-1 / top-5, then the attention-box statistics (side as a fraction of the image; with
object boxes, how often the box centre lies on the object and the mean IoU). Writes metrics.json,
confusion.csv, confusion.png and per_class.csv to --out. Every image of the split is counted exactly once.

examples:
  racnn eval --checkpoint runs/racnn/best.pt
  racnn eval --checkpoint runs/racnn                 the run folder: its best.pt (else model.safetensors, last.pt)
  racnn eval --checkpoint best.pt --set data.root=/data/CUB_200_2011 --device cpu -b 32 -j 4 --out eval_cub

exit codes: 0 done, 2 bad input (checkpoint, data path, config key).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from racnn.cli.errors import check_classes, fail, fail_os, fresh_folder, refuse_model_overrides
from racnn.cli.flags import AMP_HELP, CHECKPOINT_HELP, DEVICES, add_amp, add_batch_size, add_device, add_workers
from racnn.config import ConfigError
from racnn.safety import printable

log = logging.getLogger(__name__)

EVAL_FILES = ("metrics.json", "confusion.csv", "confusion.png", "per_class.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the checkpoint's stored config, repeatable; for the data and the run settings, "
        "e.g. --set data.root=/data/CUB_200_2011 --set data.eval_batch_size=8 --set train.device=cpu",
    )  # fmt: skip
    add_amp(
        parser, None,
        f"{AMP_HELP} (default auto, or --set train.amp=... when given; the train.amp stored with the model is not "
        "used)",
    )  # fmt: skip
    parser.add_argument(
        "--split", default="test", choices=("test", "val", "train"),
        help="the split to evaluate: test (default), val (the validation split the run chose its model on: the "
        "layout's own, or the same images carved from train) or train (what is left of train)",
    )  # fmt: skip
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write metrics.json and the confusion matrix (default: CHECKPOINT_DIR/eval)",
    )
    parser.add_argument(
        "--head", default=None,
        help="the head whose confusion matrix and per-class accuracy are written: fused (all scales), s1, s2, "
        "..., 1+2, avg (default: the one train.best_metric names; the mean of the scales, avg, where that head was "
        "never trained)",
    )  # fmt: skip
    add_device(parser, None, f"{DEVICES}: sets train.device (default: the checkpoint's)")
    add_batch_size(parser, "images per forward pass: sets data.eval_batch_size (default: the checkpoint's)", None)
    add_workers(parser, "data-loader worker processes: sets data.num_workers (default: the checkpoint's)", None)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides the shared flags stand for, placed before ``--set`` so that ``--set`` wins."""
    overrides = []
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.batch_size is not None:
        overrides.append(f"data.eval_batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    return overrides


def format_table(metrics: dict[str, Any], num_scales: int, trained: list[str] | None = None) -> str:
    """The per-scale table ``racnn eval`` prints (percentages); heads not in ``trained`` (None: all) are marked."""
    from racnn.modeling.heads import is_trained
    from racnn.modeling.model import RACNN

    heads = [(f"scale {s}", f"s{s}") for s in range(1, num_scales + 1)]
    heads += [(key, key) for key in (RACNN.fusion_name(n) for n in range(2, num_scales + 1))]
    heads.append(("mean prob.", "avg"))
    lines = [f"{'head':<12} {'top-1 %':>8} {'top-5 %':>8}"]
    lines += [
        f"{name:<12} {100 * metrics[f'top1_{k}']:>8.2f} {100 * metrics[f'top5_{k}']:>8.2f}"
        + ("" if is_trained(k, trained) else "  (never trained: not an answer)")
        for name, k in heads
    ]
    lines.append(f"{metrics['n_images']} images; ranking loss {metrics['rank_loss']:.4f}")
    lines += attention_rows(metrics)
    overlaps = [key.removeprefix("region_iou_") for key in metrics if key.startswith("region_iou_s")]
    if overlaps:  # model.regions > 1: how far apart the regions stay (0: disjoint, 1: one box)
        lines.append("regions' mutual IoU: " + ", ".join(f"{k} {metrics[f'region_iou_{k}']:.3f}" for k in overlaps))
    return "\n".join(lines)


def attention_rows(metrics: dict[str, Any]) -> list[str]:
    """The attention boxes against the object boxes (:mod:`racnn.training.box_scores`): one row per zoomed scale (per
    scale and region with ``model.regions > 1``), then the objects' own spread to read the boxes' against."""
    lines = [
        f"{'attention':<12} {'side %':>7} {'centre in %':>11} {'covers %':>8} {'on obj. %':>9} {'IoU':>6} "
        f"{'std x':>6} {'std y':>6} {'std side':>8} {'corr size':>9}"
    ]
    for key in [key.removeprefix("box_side_") for key in metrics if re.fullmatch(r"box_side_s\d+(_r\d+)?", key)]:
        name = "box " + key.replace("_r", " r")
        cells = [f"{100 * metrics[f'box_side_{key}']:>7.1f}"]
        known = f"box_iou_{key}" in metrics
        for field, width, scale, digits in (("in_object", 11, 100, 1), ("covers_object", 8, 100, 1),
                                            ("on_object", 9, 100, 1), ("iou", 6, 1, 3)):  # fmt: skip
            cells.append(f"{scale * metrics[f'box_{field}_{key}']:>{width}.{digits}f}" if known else f"{'-':>{width}}")
        cells += [f"{metrics[f'box_centre_std_x_{key}']:>6.3f}", f"{metrics[f'box_centre_std_y_{key}']:>6.3f}"]
        cells.append(f"{metrics[f'box_side_std_{key}']:>8.3f}")
        cells.append(f"{metrics[f'box_side_corr_{key}']:>9.2f}" if known else f"{'-':>9}")
        lines.append(f"{name:<12} " + " ".join(cells))
    if "object_centre_std_x" in metrics:
        lines.append(
            f"object boxes ({metrics['n_object_boxes']} images): size {metrics['object_size_mean']:.3f} "
            f"(std {metrics['object_size_std']:.3f}), centre std x {metrics['object_centre_std_x']:.3f} "
            f"y {metrics['object_centre_std_y']:.3f}; size = sqrt(area), sides and sizes in units of scale 1's input"
        )
    else:
        lines.append("no object boxes in this data set: the boxes' spread only")
    return lines


def show_progress(wanted: bool, args: argparse.Namespace) -> bool:
    """A progress bar on stderr: when the config wants one, ``--quiet`` is not given and stderr is a terminal."""
    return wanted and getattr(args, "verbosity", None) != "quiet" and sys.stderr.isatty()


def main(args: argparse.Namespace) -> int:
    from racnn.checkpoint import CheckpointError, find_model_file, load_model
    from racnn.config import apply_overrides, resolve_device
    from racnn.data import DatasetError
    from racnn.modeling.heads import answer_head
    from racnn.precision import choose_precision, prepare_for_inference
    from racnn.training import build_split, evaluate, make_eval_loader, object_boxes_in_input

    try:
        refuse_model_overrides(args.overrides, "the model is the one stored in the checkpoint")
        source = find_model_file(args.checkpoint)
        out = Path(args.out) if args.out else source.parent / "eval"
        out = fresh_folder(out, EVAL_FILES, explicit=args.out is not None, what="--out")
        cpu_model, stored_cfg, class_names = load_model(source)
        cfg = apply_overrides(stored_cfg, flag_overrides(args) + args.overrides)
        device = resolve_device(cfg.train.device)
        amp_set = any(item.split("=", 1)[0].strip() == "train.amp" for item in args.overrides)
        amp = args.amp or (cfg.train.amp if amp_set else "auto")  # not the stored one: how it was trained
        precision = choose_precision(amp, device, cfg.train.channels_last)
        model = prepare_for_inference(cpu_model, device, precision)  # weights cast once, not autocast per batch
        dataset = build_split(cfg, args.split, list(model.mean), list(model.std))
        check_classes(args.checkpoint, class_names, dataset, cfg.data)
        log.info(printable(f"{source}: {precision.describe()}"))  # once the input is accepted
        loader = make_eval_loader(dataset, cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
        side = cfg.data.source_size or cfg.model.input_size  # the side the test geometry ran at
        object_boxes = object_boxes_in_input(dataset, side, cfg.data.resize_ratio)
        trained = getattr(model, "trained_heads", None)
        head = args.head or answer_head(cfg.train.best_metric.split("_", 1)[-1], trained, cfg.model.num_scales)
        metrics = evaluate(
            model, loader, device=device, margin=cfg.train.margin, amp="none",
            channels_last=precision.channels_last, object_boxes=object_boxes, class_names=class_names,
            confusion_head=head, out_dir=out, progress=show_progress(cfg.train.progress, args),
        )  # fmt: skip
    except (ConfigError, CheckpointError, DatasetError, FileNotFoundError, ValueError) as e:
        return fail("racnn eval: ", e)
    except OSError as e:  # the output folder could not be written (no permission, disk full)
        return fail_os("racnn eval: ", e)
    print(printable(f"{source}: {cfg.data.dataset} {args.split}"))
    print(format_table(metrics, cfg.model.num_scales, trained))
    print(printable(f"wrote {out}/: metrics.json, confusion.csv, confusion.png, per_class.csv"))
    return 0
