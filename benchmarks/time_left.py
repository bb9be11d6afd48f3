"""How far the time left that a run printed was from the truth, epoch by epoch, from finished run folders.

Every row of a run's ``metrics.csv`` records ``elapsed_s`` (seconds since the run started, earlier sessions of a
resumed run included) and ``time_left_s`` (the estimate printed on the epoch line); ``run.json`` records the run's
``train_seconds`` once it has finished. The truth after an epoch is ``train_seconds - elapsed_s``:

    python benchmarks/time_left.py runs/cpu_lite0_cub_whole [more run folders]

Nothing is re-run; a run folder that has not finished is skipped with a note. Timing depends on the machine and its
load: read it beside the load the run had (docs/BENCHMARKS.md, "Time left").
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def rows_of(run: Path) -> tuple[list[dict], float | None]:
    """The epoch rows of ``run``'s metrics.csv and its ``train_seconds`` (None while it has not finished)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("elapsed_s") and row.get("time_left_s")]
    record = json.loads((run / "run.json").read_text())
    return rows, record.get("train_seconds")


def table(rows: list[dict], total: float) -> list[str]:
    """Markdown rows: after each epoch, the estimate against the truth and the error in % of the truth."""
    lines = [
        "| after epoch | phase | elapsed s | estimate s | truth s | error |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        elapsed, estimate = float(row["elapsed_s"]), float(row["time_left_s"])
        truth = total - elapsed
        error = f"{100 * (estimate - truth) / truth:+.0f} %" if truth > 0 else "–"
        lines.append(
            f"| {row['global_epoch']} | {row['phase']} | {elapsed:.0f} | {estimate:.0f} | {truth:.0f} | {error} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    args = parser.parse_args(argv)
    for run in args.runs:
        rows, total = rows_of(run)
        if total is None:
            print(f"{run}: not finished (run.json has no train_seconds); skipped")
            continue
        print(f"\n{run} (train_seconds {total:.0f})")
        print("\n".join(table(rows, total)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
