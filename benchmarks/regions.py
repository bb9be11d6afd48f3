"""Do several attention regions per scale beat one? Measured on the synthetic set's two-details mode (issue #12).

In that mode (``data.options.two_details: true``) the class is (stripe orientation of the object's head) x (colour
pair of its tail), the two discs about 0.4 of the image apart: one region of the usual side sees one of them. For
each seed and each ``model.regions`` this trains the ``synthetic_tiny`` recipe (``--set`` to change it) and reports,
for the model chosen on val:

- ``val s2`` / ``test s2``: top-1 of scale 2 (the first zoomed scale, which reads its regions' pooled feature);
- ``val fused`` / ``test fused``: top-1 of the all-scale fusion head (of the mean of the scales, ``avg``, where the
  model chosen on val is one from before the fusion phase: its fusion head was never trained);
- ``head`` / ``tail`` / ``both``: on the test images, how often the head's centre, the tail's centre, both centres
  lie inside some scale-2 region box (image coordinates);
- ``wall``: the run's seconds.

``--pools`` runs every K > 1 with each of these ``model.region_pool`` settings (default: mean). Nothing here is a
test: it prints a table (and with ``--record`` appends it to docs/BENCHMARKS.md with the command, machine, date).

    python benchmarks/regions.py --seeds 0,1 --regions 1,2 --record
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch

from accuracy import machine
from racnn.checkpoint import load_model
from racnn.config import load_config
from racnn.modeling.heads import answer_head
from racnn.modeling.regions import as_regions
from racnn.training import build_split, fit, make_eval_loader
from racnn.training.loop import model_inputs

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("val s2", "test s2", "val fused", "test fused", "head", "tail", "both")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default: 0,1)")
    parser.add_argument("--regions", default="1,2", help="comma-separated values of model.regions (default: 1,2)")
    parser.add_argument("--pools", default="mean", help="comma-separated region_pool values for K > 1 (default: mean)")
    parser.add_argument("--output-dir", default="runs/regions", help="where the runs go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--record", action="store_true", help="append the table to docs/BENCHMARKS.md")
    return parser


@torch.no_grad()
def coverage(checkpoint: Path) -> dict[str, float]:
    """How often each detail's centre lies inside some scale-2 region box, on the test split."""
    model, cfg, _ = load_model(checkpoint)
    test = build_split(cfg, "test", list(model.mean), list(model.std))
    details = test.detail_boxes()  # (N, 2, 4): head, tail; the synthetic test transform keeps the framing
    centres = (details[..., :2] + details[..., 2:]) / 2  # (N, 2, 2)
    hits = []
    for images, _, indices in make_eval_loader(test, cfg.data.eval_batch_size):
        boxes = as_regions(model(*model_inputs(images)).boxes_in_image[0].float())  # (B, R, 3)
        tx, ty, tl = boxes.unbind(-1)  # (B, R) each; square inputs: tl is the half side in x and in y
        cx, cy = centres[indices, :, 0, None], centres[indices, :, 1, None]  # (B, 2, 1)
        inside = ((cx - tx[:, None]).abs() <= tl[:, None]) & ((cy - ty[:, None]).abs() <= tl[:, None])  # (B, 2, R)
        hits.append(inside.any(-1))  # (B, 2)
    covered = torch.cat(hits).float()  # (N, 2)
    return {"head": covered[:, 0].mean().item(), "tail": covered[:, 1].mean().item(),
            "both": covered.all(-1).float().mean().item()}  # fmt: skip


def run(seed: int, regions: int, pool: str, args: argparse.Namespace) -> dict[str, float]:
    settings = ["data.options.two_details=true", f"model.regions={regions}", f"model.region_pool={pool}",
                f"train.seed={seed}", f"train.output_dir={args.output_dir}", f"train.name=k{regions}_{pool}_s{seed}",
                "train.visualize=false", *args.overrides]  # fmt: skip
    cfg = load_config("synthetic_tiny", settings)
    start = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - start
    history = [row for row in result.history if "val_top1_s2" in row]
    chosen = next((row for row in history if row["global_epoch"] == result.metrics["chosen_epoch"]), history[-1])
    answer = answer_head("fused", result.trained_heads, cfg.model.num_scales)  # "avg" while fusion is untrained
    values = {
        "val s2": chosen["val_top1_s2"],
        "test s2": result.metrics["top1_s2"],
        "val fused": chosen[f"val_top1_{answer}"],
        "test fused": result.metrics[f"top1_{answer}"],
    }
    return {**values, **coverage(result.run_dir / "model.safetensors"), "wall": wall}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [int(k) for k in args.regions.split(",")]
    plan = [(k, pool) for k in ks for pool in (args.pools.split(",") if k > 1 else ["mean"])]
    lines = ["| regions | pool | seed | " + " | ".join(f"{c} %" for c in COLUMNS) + " | wall s |"]
    lines.append("|---:|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    print("\n".join(lines), flush=True)
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    for k, pool in plan:
        for seed in seeds:
            values = run(seed, k, pool, args)
            results.setdefault((k, pool), []).append(values)
            cells = " | ".join(f"{100 * values[c]:.1f}" for c in COLUMNS)
            lines.append(f"| {k} | {pool if k > 1 else '-'} | {seed} | {cells} | {values['wall']:.0f} |")
            print(lines[-1], flush=True)
    for (k, pool), rows in results.items():
        means = " | ".join(f"{100 * sum(r[c] for r in rows) / len(rows):.1f}" for c in COLUMNS)
        lines.append(f"| {k} | {pool if k > 1 else '-'} | mean | {means} | |")
        print(lines[-1], flush=True)
    if args.record:
        command = "python benchmarks/regions.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        record = [
            "",
            f"### Several regions per scale, two-details synthetic set ({datetime.date.today().isoformat()})",
            "",
            f"`{command}` on {machine()}.",
            "",
            *lines,
            "",
        ]
        with open(ROOT / "docs" / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
