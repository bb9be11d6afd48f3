"""Accuracy of RA-CNN against the controls that separate the attention's share from the extra networks'.

On the same data, seeds and budget (METHOD §6), one row per model and seed, printed as soon as it is known:

- **baseline**: one network, the scale-1 backbone at the scale-1 size, RA-CNN's classification epochs;
- **ensemble**: the mean probabilities of as many baselines as RA-CNN has scales (seeds s, s+1, ...: the same
  number of networks and training images; the members are the baselines of the other seeds);
- **fixed zoom**: RA-CNN with the attention off, every box centred with the recipe's side
  (``model.fixed_side = train.pretrain_side``), no APN phases;
- **APN pre-trained only**: RA-CNN without the ranking phase (``train.apn.epochs=0``);
- **oracle zoom**: the fixed-zoom control with scale 2's box the annotated object box, made square, at training and
  test time (``model.oracle_zoom``): the ceiling, what a perfect attention is worth with the same networks (a data
  set without object boxes skips it with a one-line note);
- **one network at the zooms' resolution**: the baseline with scale 1's input at ``data.source_size`` (the size the
  zooms read the photo at; ``model.zoom_size`` without a source view), so that a gain from pixels and a gain from
  where the box went can be told apart (skipped when that is scale 1's size);
- **RA-CNN**: the full schedule, branched off the pre-trained-only run where the ranking phase starts (the shared
  phases run once: the pre-trained-only run keeps its phase checkpoints and the full run resumes from the one
  before its first APN phase).

The RA-CNN variants run first (the rows a stopped run should not lose), then the baselines and their ensemble.
Models are chosen on the validation split (``data.val_fraction``); the test split is read once per model. Then a
summary: mean and spread (min-max) over the seeds of val and test top-1, and test top-1 of scales 1-3 for the
RA-CNN variants; and, where the data set has object boxes, the attention's scores against them for every zoomed
scale of every RA-CNN variant, on val and test (:mod:`racnn.training.box_scores`), beside the objects' own spread.
``--record`` appends the tables to docs/BENCHMARKS.md with the command, the machine (CPU model, whether it has
oneDNN bf16 kernels) and the date.

    python benchmarks/accuracy.py --data ../shared/data/cub50 --seeds 0,1 --record
    python benchmarks/accuracy.py --data ../shared/data/cub50 --seeds 0,1 --record --resume   # after a stop
    python benchmarks/accuracy.py --data /data/CUB_200_2011 --config paper_vgg19_cub --seeds 0,1,2

``--resume`` picks a stopped benchmark up in the same ``--output-dir``: the RA-CNN runs that finished there are read
back (their test metrics from metrics.json, nothing re-evaluated; their wall time from the run folder's file times,
config.yaml to metrics.json), the ones that stopped continue from their last.pt, the rest run; the baselines run
again (they keep no run folder). A run folder started with other settings stops it with a message. Without it, a run
whose folder is taken goes to ``name-1``.

The data path is an argument; any CUB_200_2011-layout folder works unchanged (``--dataset`` for others).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from statistics import mean

import torch

from racnn.checkpoint import load_checkpoint
from racnn.config import Config, config_to_dict, load_config
from racnn.training import TrainResult, expand_schedule, fit, train_baseline
from racnn.training.baseline import topk_accuracy
from racnn.training.run_files import branch_run, phase_checkpoint
from racnn.training.schedule import first_phase

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("baseline", "wide", "ensemble", "fixed", "oracle", "pretrained", "racnn")
NAMES = {
    "baseline": "baseline (1 network)",
    "ensemble": "ensemble of {S} baselines",
    "fixed": "fixed zoom (attention off)",
    "oracle": "oracle zoom (the object box)",
    "wide": "1 network at {size} px",
    "pretrained": "APN pre-trained only",
    "racnn": "RA-CNN",
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="the data set folder (a CUB_200_2011 layout by default)")
    parser.add_argument("--config", default="cpu_lite0_cub50", help="the recipe")
    parser.add_argument("--dataset", default="cub", help="data set layout name (default: cub)")
    parser.add_argument("--output-dir", default="runs/accuracy", help="where the runs go")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default: 0,1)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"which rows, of {','.join(MODELS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--record", action="store_true", help="append the tables to docs/BENCHMARKS.md")
    parser.add_argument(
        "--resume", action="store_true", help="read back the runs that finished in --output-dir, continue the stopped"
    )
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
    bf16 = "oneDNN bf16 kernels" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no oneDNN bf16 kernels"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} ({bf16}), {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


class Rows:
    """The per-seed table, printed row by row as results arrive."""

    HEADER = "| model | seed | val top-1 % | test top-1 % | test s1 | test s2 | test s3 | wall |"
    RULE = "|---|---:|---:|---:|---:|---:|---:|---:|"

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.boxes: list[str] = []  # box_rows of the RA-CNN variants
        self.objects = ""  # object_line of the first run with object boxes
        self.notes: list[str] = []  # rows skipped, and why
        print(self.HEADER + "\n" + self.RULE, flush=True)

    def add_boxes(self, name: str, seed: int, result) -> None:
        self.boxes += box_rows(name, seed, result)
        self.objects = self.objects or object_line(result)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def add(self, model: str, seed: int, val: float | None, test: float, scales=(), wall: float = 0.0) -> None:
        row = {"model": model, "seed": seed, "val": val, "test": test, "scales": list(scales), "wall": wall}
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def format(row: dict) -> str:
        cells = [_pct(row["val"]), _pct(row["test"])] + [_pct(v) for v in (row["scales"] + [None] * 3)[:3]]
        return f"| {row['model']} | {row['seed']} | " + " | ".join(cells) + f" | {row['wall'] / 60:.1f} min |"

    def table(self) -> str:
        return "\n".join([self.HEADER, self.RULE] + [self.format(r) for r in self.rows])

    def summary(self) -> str:
        parts = (self.accuracy_summary(), self.box_summary(), "\n".join(self.notes))
        return "\n\n".join(part for part in parts if part)

    def box_summary(self) -> str:
        if not self.boxes:
            return ""
        rule = "|" + "---|" * 4 + "---:|" * len(BOX_KEYS)
        return "\n".join(["Attention against the object boxes:", "", BOX_HEADER, rule, *self.boxes, "", self.objects])

    def accuracy_summary(self) -> str:
        lines = ["| model | seeds | val top-1 % (min-max) | test top-1 % (min-max) | test s1 / s2 / s3 (means) |"]
        lines.append("|---|---:|---:|---:|---:|")
        for model in dict.fromkeys(r["model"] for r in self.rows):
            rows = [r for r in self.rows if r["model"] == model]
            scales = [mean(r["scales"][s] for r in rows) for s in range(len(rows[0]["scales"]))]
            lines.append(
                f"| {model} | {len(rows)} | {_spread([r['val'] for r in rows])} | "
                f"{_spread([r['test'] for r in rows])} | {' / '.join(f'{100 * v:.1f}' for v in scales) or '-'} |"
            )
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _spread(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{100 * mean(values):.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


BOX_KEYS = ("in_object", "covers_object", "on_object", "iou", "centre_std_x", "centre_std_y", "side", "side_corr")
BOX_HEADER = ("| model | seed | split | scale | centre in % | covers % | on object % | IoU | std x | std y | side | "
              "corr side-size |")  # fmt: skip


def box_rows(name: str, seed: int, result) -> list[str]:
    """The attention's scores of every zoomed scale on val (the chosen epoch) and test, when object boxes are known."""
    m = result.metrics
    chosen = [r for r in result.history if r["global_epoch"] == m["chosen_epoch"]]
    val = {k.removeprefix("val_"): v for k, v in chosen[0].items() if k.startswith("val_")} if chosen else {}
    lines = []
    for split, metrics in [("val", val), ("test", m)]:
        for s in range(2, 5):
            if f"box_iou_s{s}" not in metrics:
                continue
            cells = []
            for key in BOX_KEYS:
                value = metrics.get(f"box_{key}_s{s}")
                percent = key in ("in_object", "covers_object", "on_object")
                cells.append("-" if value is None else f"{100 * value:.1f}" if percent else f"{value:.3f}")
            lines.append(f"| {name} | {seed} | {split} | {s} | " + " | ".join(cells) + " |")
    return lines


def object_line(result) -> str:
    m = result.metrics
    if "object_centre_std_x" not in m:
        return ""
    return (f"The objects' own spread (test, {m['n_object_boxes']} images): centre std x "
            f"{m['object_centre_std_x']:.3f}, y {m['object_centre_std_y']:.3f}; size (sqrt of the area, in units of "
            f"scale 1's side) {m['object_size_mean']:.3f}, std {m['object_size_std']:.3f}.")  # fmt: skip


def _fit_row(result) -> tuple[float | None, float, list[float]]:
    """Val top-1 of the chosen epoch's answer, its test top-1 and the scales' test top-1."""
    m = result.metrics
    answer = "fused" if "fused" in result.trained_heads else "avg"
    chosen = [r for r in result.history if r["global_epoch"] == m["chosen_epoch"]]
    val = chosen[0].get(f"val_top1_{answer}") if chosen else None
    scales = [m[f"top1_s{s}"] for s in range(1, 4) if f"top1_s{s}" in m]
    return val, m[f"top1_{answer}"], scales


def _branch(pre_dir: Path, cfg: Config, out: Path) -> Path:
    """A run folder that resumes the full schedule from the pre-trained-only run, where the two part."""
    schedule = expand_schedule(cfg.train)
    return branch_run(phase_checkpoint(pre_dir, schedule, first_phase(schedule, "apn") - 1), cfg, out)


def _finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that ended: tested (metrics.json) and shipped (model.safetensors)."""
    return (run_dir / "metrics.json").is_file() and (run_dir / "model.safetensors").is_file()


def _read_back(run_dir: Path) -> TrainResult:
    """The :class:`TrainResult` a finished run's :func:`fit` returned, from its files (nothing is evaluated)."""
    state = load_checkpoint(run_dir / "last.pt")["state"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = (run_dir / "best.pt").is_file()  # as fit: the model chosen on val, else the last one
    metrics["chosen_epoch"] = state.get("best_epoch", state["global_epoch"]) if chosen else state["global_epoch"]
    trained = state.get("best_trained", state["trained"]) if chosen else state["trained"]
    return TrainResult(run_dir, metrics, list(state["history"]), list(trained))


def _check_settings(run_dir: Path, cfg: Config) -> None:
    """``--resume`` takes a run over only if it was started with ``cfg``'s settings (stale rows otherwise)."""
    saved, wanted = config_to_dict(load_config(run_dir / "config.yaml")), config_to_dict(cfg)
    if wanted["model"]["num_classes"] == 0:  # counted from the data when the run started
        saved["model"]["num_classes"] = 0
    changed = [f"{part}.{key}" for part in wanted for key in wanted[part] if saved[part][key] != wanted[part][key]]
    if changed:
        raise SystemExit(
            f"--resume: {run_dir} was run with other settings ({', '.join(changed)}); "
            "give another --output-dir, or leave --resume out to run it again beside it"
        )


def _seconds_between(run_dir: Path, first: str, last: str) -> float:
    return (run_dir / last).stat().st_mtime - (run_dir / first).stat().st_mtime


def _fit_once(cfg: Config, resume: bool, branch_from: Path | None = None) -> tuple[TrainResult, float]:
    """Fit ``cfg`` (branched off the pre-trained-only run ``branch_from``, if given) and the wall time it took.

    With ``resume``, a run that finished in ``output_dir/name`` is read back and one that stopped there continues;
    the time they ran before counts, read from their files' times (a pause inside a finished run counts too).
    """
    run_dir = Path(cfg.train.output_dir) / cfg.train.name
    start = time.perf_counter()
    if resume and (run_dir / "config.yaml").is_file():
        _check_settings(run_dir, cfg)
        if _finished(run_dir):
            return _read_back(run_dir), _seconds_between(run_dir, "config.yaml", "metrics.json")
        if (run_dir / "last.pt").is_file():
            before = _seconds_between(run_dir, "config.yaml", "last.pt")
            return fit(cfg, resume=run_dir), before + time.perf_counter() - start
    if branch_from is not None:
        return fit(cfg, resume=_branch(branch_from, cfg, run_dir)), time.perf_counter() - start
    return fit(cfg), time.perf_counter() - start


def run(args: argparse.Namespace) -> Rows:
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {MODELS}")
    base_overrides = [f"data.dataset={args.dataset}", f"train.output_dir={args.output_dir}"]
    base_overrides += ["train.keep_checkpoints=true", *args.overrides]  # _read_back reads last.pt and best.pt
    if args.data is not None:
        base_overrides.insert(0, f"data.root={args.data}")

    def config(seed: int, *extra: str) -> Config:
        return load_config(args.config, [*base_overrides, f"train.seed={seed}", *extra])

    scales = config(seeds[0]).model.num_scales
    rows = Rows()
    for seed in seeds:
        cfg = config(seed)
        if {"pretrained", "racnn"} & set(models):
            name = f"{cfg.train.name}_pretrained_s{seed}"
            pre_cfg = config(seed, "train.apn.epochs=0", "train.keep_phase_checkpoints=true", f"train.name={name}")
            pre, pre_wall = _fit_once(pre_cfg, args.resume)
            if "pretrained" in models:
                rows.add(NAMES["pretrained"], seed, *_fit_row(pre), pre_wall)
                rows.add_boxes(NAMES["pretrained"], seed, pre)
            if "racnn" in models:
                full_cfg = config(seed, f"train.name={cfg.train.name}_s{seed}")
                result, wall = _fit_once(full_cfg, args.resume, branch_from=pre.run_dir)
                shared = sum(r["global_epoch"] <= _shared_epochs(full_cfg) for r in pre.history) / len(pre.history)
                rows.add(NAMES["racnn"], seed, *_fit_row(result), wall + shared * pre_wall)
                rows.add_boxes(NAMES["racnn"], seed, result)
        if "fixed" in models:
            side = cfg.train.pretrain_side
            fixed = config(seed, f"model.fixed_side={side}", "train.apn_pretrain.epochs=0", "train.apn.epochs=0",
                           f"train.name={cfg.train.name}_fixed_s{seed}")  # fmt: skip
            result, wall = _fit_once(fixed, args.resume)
            rows.add(NAMES["fixed"], seed, *_fit_row(result), wall)
            rows.add_boxes(NAMES["fixed"], seed, result)
        if "oracle" in models:
            _oracle(config(seed, f"model.fixed_side={cfg.train.pretrain_side}", "model.oracle_zoom=true",
                           "train.apn_pretrain.epochs=0", "train.apn.epochs=0",
                           f"train.name={cfg.train.name}_oracle_s{seed}"), args.resume, rows)  # fmt: skip
    baselines: dict[int, dict] = {}
    if {"baseline", "ensemble"} & set(models):
        needed = sorted({s + i for s in seeds for i in range(scales if "ensemble" in models else 1)})
        for seed in needed:
            start = time.perf_counter()
            baselines[seed] = train_baseline(config(seed), keep_probs=True)
            baselines[seed]["wall"] = time.perf_counter() - start
            if "baseline" in models and seed in seeds:
                b = baselines[seed]
                rows.add(NAMES["baseline"], seed, b.get("val_top1"), b["top1"], wall=b["wall"])
    if "wide" in models:
        first = config(seeds[0])
        size = first.data.source_size or max(first.model.input_size, first.model.zoom_size)
        if size == first.model.input_size:
            rows.note(f"no '{NAMES['wide'].format(size=size)}' row: the zooms read the image at scale 1's size")
        for seed in seeds if size != first.model.input_size else []:
            start = time.perf_counter()
            wide = train_baseline(config(seed, f"model.input_size={size}", "data.source_size=0"))
            rows.add(NAMES["wide"].format(size=size), seed, wide.get("val_top1"), wide["top1"],
                     wall=time.perf_counter() - start)  # fmt: skip
    if "ensemble" in models:
        for seed in seeds:
            members = [baselines[seed + i] for i in range(scales)]
            accuracy = {}
            for split in members[0]["probs"]:
                probs = torch.stack([m["probs"][split] for m in members]).mean(0)
                accuracy[split] = topk_accuracy(probs, members[0]["targets"][split])["top1"]
            wall = sum(m["wall"] for m in members)
            rows.add(NAMES["ensemble"].format(S=scales), seed, accuracy.get("val"), accuracy["test"], wall=wall)
    return rows


def _oracle(cfg: Config, resume: bool, rows: Rows) -> None:
    """The oracle-zoom row, or a one-line note where the data set has no object boxes."""
    from racnn.config import ConfigError

    try:
        result, wall = _fit_once(cfg, resume)
    except ConfigError as error:
        if "oracle_zoom needs object boxes" not in str(error):
            raise
        if not any(NAMES["oracle"] in note for note in rows.notes):
            rows.note(f"no '{NAMES['oracle']}' row: {error}")
        return
    rows.add(NAMES["oracle"], cfg.train.seed, *_fit_row(result), wall)
    rows.add_boxes(NAMES["oracle"], cfg.train.seed, result)


def _shared_epochs(cfg: Config) -> int:
    """Epochs of the phases before the first APN phase: those the full run shares with the pre-trained-only run."""
    schedule = expand_schedule(cfg.train)
    return sum(phase.epochs for _, phase, _ in schedule[: first_phase(schedule, "apn")])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rows = run(args)
    summary = rows.summary()
    print("\n" + summary)
    if args.record:
        command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        data = Path(args.data).name if args.data else args.dataset
        block = (
            f"\n### {data}, {Path(args.config).name}, seeds {args.seeds}: RA-CNN and its controls ({stamp})\n\n"
            f"```\n{command}\n```\n\nMachine: {machine()}. Models chosen on val, the test split read once each. "
            f"The RA-CNN row's wall time counts the phases it shares with the pre-trained-only run.\n\n"
            f"{rows.table()}\n\n{summary}\n"
        )
        with open(ROOT / "docs" / "BENCHMARKS.md", "a") as f:
            f.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
