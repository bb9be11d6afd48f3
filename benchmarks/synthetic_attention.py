"""Does the ranking phase teach the attention? Measured where the answer is known: the synthetic set.

The synthetic set knows where its discriminative detail is (``detail_boxes()``: the small striped disc that alone
tells the classes apart). For each seed this trains the demo recipe (``racnn demo``'s settings, ``--set`` to change
them; the fusion phase, beside the point here, is skipped) keeping every phase's checkpoint, then compares, on the
validation images, the model just before its first APN (ranking) phase with the same model just after it (same
backbones and classifiers: only the APNs differ):

- ``IoU s2`` / ``IoU s3``: the IoU of the scale-2 / scale-3 box (in image coordinates) with the detail box;
- ``on detail s2`` / ``s3``: how often the box centre lies on the detail;
- ``val s2`` / ``val s3``: top-1 of scales 2 and 3.

``--compare KEY=VALUE`` (repeatable; several settings of one variant joined by commas) adds ranking phases with
other settings, each branched off the same checkpoint (``racnn.training.run_files.branch_run``), so the variants
start from the same model and differ only in their ranking phase.

Prints a row per seed and model, then for each ranking variant the paired change (after - before) per quantity:
its mean and min-max over the seeds, in how many seeds it went up and down, and whether it is beyond the seed
spread (every seed's change has the same sign and the mean change is larger than the spread, max - min, of the
"before" values over the seeds: a strict test, as seeds differ much in where pre-training puts the boxes). ``--record``
appends the tables to docs/BENCHMARKS.md with the command, the machine and the date.

    python benchmarks/synthetic_attention.py --seeds 0,1,2 --record
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from statistics import mean

import torch

from accuracy import machine
from racnn.checkpoint import load_model
from racnn.cli.demo import demo_config
from racnn.training import build_split, evaluate, expand_schedule, fit, make_eval_loader, object_boxes_in_input
from racnn.training.run_files import branch_run, phase_checkpoint
from racnn.training.schedule import first_phase

ROOT = Path(__file__).resolve().parents[1]
QUANTITIES = ("IoU s2", "IoU s3", "on detail s2", "on detail s3", "val s2", "val s3")
KEYS = ("box_iou_s2", "box_iou_s3", "box_in_object_s2", "box_in_object_s3", "top1_s2", "top1_s3")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: 0,1,2)")
    parser.add_argument("--output-dir", default="runs/synthetic_attention", help="where the runs go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
        help="a ranking-phase variant to branch off the same checkpoint, e.g. train.rank_coarser=fixed",
    )  # fmt: skip
    parser.add_argument("--record", action="store_true", help="append the tables to docs/BENCHMARKS.md")
    return parser


class _Details:
    """A data set's detail boxes, dressed as object boxes for :func:`object_boxes_in_input`."""

    def __init__(self, dataset) -> None:
        self.dataset, self.image_size = dataset, dataset.image_size

    def object_boxes(self) -> torch.Tensor:
        return self.dataset.detail_boxes()


def attention_metrics(checkpoint: Path) -> dict[str, float]:
    """The quantities of :data:`QUANTITIES` for one checkpoint, on its validation split."""
    model, cfg, _ = load_model(checkpoint)
    val = build_split(cfg, "val", list(model.mean), list(model.std))
    details = object_boxes_in_input(_Details(val), cfg.model.input_size, cfg.data.resize_ratio)
    metrics = evaluate(model, make_eval_loader(val, cfg.data.eval_batch_size), object_boxes=details)
    return {name: metrics[key] for name, key in zip(QUANTITIES, KEYS, strict=True)}


def around_first_ranking_phase(run_dir: Path, cfg) -> tuple[Path, Path]:
    """The phase checkpoints just before and just after the first APN phase."""
    schedule = expand_schedule(cfg.train)
    first = first_phase(schedule, "apn")
    return phase_checkpoint(run_dir, schedule, first - 1), phase_checkpoint(run_dir, schedule, first)


def _changes(name: str, before: list[dict[str, float]], after: list[dict[str, float]]) -> list[str]:
    lines = []
    for q in QUANTITIES:
        b, a = [m[q] for m in before], [m[q] for m in after]
        change = [y - x for x, y in zip(b, a, strict=True)]
        same_sign = all(c > 0 for c in change) or all(c < 0 for c in change)
        beyond = same_sign and abs(mean(change)) > max(b) - min(b)
        lines.append(
            f"| {name} | {q} | {100 * mean(b):.1f} | {100 * mean(a):.1f} | {100 * mean(change):+.1f} "
            f"({100 * min(change):+.1f} to {100 * max(change):+.1f}) | {sum(c > 0 for c in change)} / "
            f"{sum(c < 0 for c in change)} | {'yes' if beyond else 'no'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {"as configured": []} | {v: v.split(",") for v in args.compare}
    header = "| seed | model | " + " | ".join(QUANTITIES) + " |"
    lines = [header, "|---|---|" + "---:|" * len(QUANTITIES)]
    print("\n".join(lines), flush=True)
    measured: dict[str, list[dict[str, float]]] = {"before": []} | {v: [] for v in variants}

    def row(seed: int, label: str, values: dict[str, float]) -> None:
        lines.append(f"| {seed} | {label} | " + " | ".join(f"{100 * values[q]:.1f}" for q in QUANTITIES) + " |")
        print(lines[-1], flush=True)

    for seed in seeds:
        settings = [f"train.seed={seed}", f"train.output_dir={args.output_dir}", f"train.name=attention_s{seed}",
                    "train.keep_phase_checkpoints=true", "train.visualize=false",
                    "train.fusion.epochs=0", *args.overrides]  # fmt: skip
        cfg = demo_config(overrides=settings)
        result = fit(cfg)
        before, after = around_first_ranking_phase(result.run_dir, cfg)
        measured["before"].append(attention_metrics(before))
        row(seed, "APN pre-trained (before ranking)", measured["before"][-1])
        measured["as configured"].append(attention_metrics(after))
        row(seed, "after the ranking phase", measured["as configured"][-1])
        for n, (name, extra) in enumerate(list(variants.items())[1:], 1):
            branch_cfg = demo_config(overrides=[*settings, *extra])
            out = branch_run(before, branch_cfg, Path(args.output_dir) / f"attention_s{seed}_variant{n}")
            branched = fit(branch_cfg, resume=out)
            measured[name].append(attention_metrics(branched.run_dir / after.name))
            row(seed, f"after the ranking phase, {name}", measured[name][-1])
    columns = "change: mean (min-max) | seeds up / down | beyond seed spread"
    summary = [f"| ranking phase | quantity (%) | before | after | {columns} |"]
    summary.append("|---|---|---:|---:|---:|---:|---|")
    for name in variants:
        summary += _changes(name, measured["before"], measured[name])
    print("\n" + "\n".join(summary))
    if args.record:
        command = "python benchmarks/synthetic_attention.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = (
            f"\n### Synthetic set: the attention before and after the ranking phase, seeds {args.seeds} ({stamp})\n\n"
            f"```\n{command}\n```\n\nMachine: {machine()}. Validation images; the same model before and after its "
            f"first APN phase (only the APNs differ).\n\n" + "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"
        )
        with open(ROOT / "docs" / "BENCHMARKS.md", "a") as f:
            f.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
