"""Evaluate a checkpoint on a data split: per-scale and fused accuracy, attention boxes, confusion matrix.

Prints a table with one row per head (scale 1, 2, 3, the fusions 1+2, 1+2+3, and the mean of the per-scale
probabilities) with top-1 / top-5, then the attention-box statistics (side as a fraction of the image; with
object boxes, how often the box centre lies on the object and the mean IoU). Writes metrics.json,
confusion.csv, confusion.png and per_class.csv to --out. Every image of the split is counted exactly once.

By default it reproduces the run's own test table to the digit: the precision is the run's train.amp (as stored
with the model; auto is decided again on this machine), run as training ran it (float32 weights under autocast),
with the run's channels-last, batch size and preprocessing. It prints which it used. --amp (or --set train.amp)
chooses another precision; --format markdown | csv | latex | json prints the table to paste (stdout holds only
the table then; what was used goes to stderr, and into the JSON).

examples:
  racnn eval --checkpoint runs/racnn                 the run folder: its model.safetensors (best.pt when kept)
  racnn eval --checkpoint runs/racnn --format markdown > results.md
  racnn eval --checkpoint best.pt --set data.root=/data/CUB_200_2011 --device cpu -b 32 -j 4 --out eval_cub

exit codes: 0 done, 2 bad input (checkpoint, data path, config key).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from racnn.cli.errors import check_classes, fail, fail_os, fresh_folder, refuse_model_overrides
from racnn.cli.flags import AMP_HELP, CHECKPOINT_HELP, DEVICES, add_amp, add_batch_size, add_device, add_workers
from racnn.config import ConfigError
from racnn.safety import printable

log = logging.getLogger(__name__)

EVAL_FILES = ("metrics.json", "confusion.csv", "confusion.png", "per_class.csv")
# racnn.training.results_table.FORMATS, written out so that --help needs no torch (a test keeps them equal)
FORMAT_NAMES = ("text", "markdown", "csv", "latex", "json")
# Data settings that change what the model is fed (the model's own input size cannot be overridden).
PREPROCESSING_KEYS = ("data.resize_ratio", "data.source_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the checkpoint's stored config, repeatable; for the data and the run settings, "
        "e.g. --set data.root=/data/CUB_200_2011 --set data.eval_batch_size=8 --set train.device=cpu",
    )  # fmt: skip
    add_amp(
        parser, None,
        f"{AMP_HELP} (default: the run's train.amp, stored with the model, as training tested it; --set train.amp "
        "also sets it)",
    )  # fmt: skip
    parser.add_argument(
        "--format", default="text", choices=FORMAT_NAMES,
        help="how the table is printed: text (default), or a table to paste: markdown, csv, latex, json (then "
        "stdout holds only the table)",
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


def _amp_source(args: argparse.Namespace) -> tuple[str, str]:
    """The precision asked for, and where it came from: ``--amp``, ``--set train.amp``, else the run's."""
    if args.amp is not None:
        return args.amp, "--amp"
    for item in reversed(args.overrides):
        key, _, value = item.partition("=")
        if key.strip() == "train.amp":
            return value.strip(), "--set train.amp"
    return "", "the run's train.amp"


def _recorded_amp(run_dir: Path) -> str:
    """The precision the run's last session tested in (``run.json``: ``fp32`` -> ``none``), or "" without one."""
    from racnn.training.run_record import read_record

    try:
        record = read_record(run_dir) or {}
    except ConfigError:
        return ""
    sessions = [record, *(record.get("resumed") or [])]
    chosen = [s.get("precision") for s in sessions if isinstance(s, dict) and s.get("precision")]
    name = chosen[-1] if chosen else ""
    return {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}.get(name, "")


def _preprocessing_source(args: argparse.Namespace) -> str:
    changed = [key for key in (i.split("=", 1)[0].strip() for i in args.overrides) if key in PREPROCESSING_KEYS]
    return f"{', '.join(f'--set {k}' for k in dict.fromkeys(changed))}: not the run's" if changed else "the run's"


def show_progress(wanted: bool, args: argparse.Namespace) -> bool:
    """A progress bar on stderr: when the config wants one, ``--quiet`` is not given and stderr is a terminal."""
    return wanted and getattr(args, "verbosity", None) != "quiet" and sys.stderr.isatty()


def main(args: argparse.Namespace) -> int:
    import torch

    from racnn.checkpoint import CheckpointError, find_model_file, load_model
    from racnn.config import apply_overrides, resolve_device
    from racnn.data import DatasetError
    from racnn.inference.hub import hub_folder, is_hub_name
    from racnn.inference.preprocessing import describe_preprocessing, preprocessing_spec
    from racnn.modeling.heads import answer_head
    from racnn.precision import choose_precision, warn_slow_bf16
    from racnn.training import build_split, evaluate, make_eval_loader, object_boxes_in_input
    from racnn.training.results_table import render, results_table

    try:
        refuse_model_overrides(args.overrides, "the model is the one stored in the checkpoint")
        source = find_model_file(hub_folder(args.checkpoint) if is_hub_name(args.checkpoint) else args.checkpoint)
        out = Path(args.out) if args.out else source.parent / "eval"
        out = fresh_folder(out, EVAL_FILES, explicit=args.out is not None, what="--out")
        model, stored_cfg, class_names = load_model(source)
        cfg = apply_overrides(stored_cfg, flag_overrides(args) + args.overrides)
        device = resolve_device(cfg.train.device)
        amp, amp_from = _amp_source(args)
        recorded = _recorded_amp(source.parent) if not amp and cfg.train.amp == "auto" else ""
        if recorded:  # what auto chose where the run ran, as its run.json says, not what it would choose here
            amp, amp_from = recorded, "run.json's record of what train.amp auto chose:"
        amp = amp or cfg.train.amp  # the run's, as stored: how it was trained and tested
        precision = choose_precision(amp, device, cfg.train.channels_last)
        warn_slow_bf16(device, precision.amp)
        # As training tested it: float32 weights under autocast (racnn.training.run), not weights cast once as
        # predict does, which gives other bf16 numbers.
        model.to(device).eval()
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        dataset = build_split(cfg, args.split, list(model.mean), list(model.std))
        check_classes(args.checkpoint, class_names, dataset, cfg.data)
        loader = make_eval_loader(dataset, cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
        side = cfg.data.source_size or cfg.model.input_size  # the side the test geometry ran at
        object_boxes = object_boxes_in_input(dataset, side, cfg.data.resize_ratio)
        trained = getattr(model, "trained_heads", None)
        head = args.head or answer_head(cfg.train.best_metric.split("_", 1)[-1], trained, cfg.model.num_scales)
        spec = preprocessing_spec(
            cfg.model.input_size, cfg.data.resize_ratio, model.mean, model.std, cfg.data.source_size
        )
        header = {
            "checkpoint": printable(str(source)),
            "data": printable(f"{cfg.data.dataset} {args.split}"),
            "precision": f"{precision.describe().removeprefix('precision: ')}; from {amp_from} {amp}",
            "preprocessing": f"{describe_preprocessing(spec)} ({_preprocessing_source(args)})",
        }
        if args.format != "text":  # stdout holds the table alone; the text format shows these above it
            log.info(f"precision: {header['precision']}\npreprocessing: {header['preprocessing']}")
        metrics = evaluate(
            model, loader, device=device, margin=cfg.train.margin, amp=precision.amp,
            channels_last=precision.channels_last, object_boxes=object_boxes, class_names=class_names,
            confusion_head=head, out_dir=out, progress=show_progress(cfg.train.progress, args),
        )  # fmt: skip
    except (ConfigError, CheckpointError, DatasetError, FileNotFoundError, ValueError) as e:
        return fail("racnn eval: ", e)
    except OSError as e:  # the output folder could not be written (no permission, disk full)
        return fail_os("racnn eval: ", e)
    table = results_table(metrics, cfg.model.num_scales, trained, header)
    if args.format == "text":
        print(render(table, "text"))
        print(printable(f"wrote {out}/: metrics.json, confusion.csv, confusion.png, per_class.csv"))
    else:
        print(render(table, args.format))
        log.info(printable(f"wrote {out}/: metrics.json, confusion.csv, confusion.png, per_class.csv"))
    return 0
