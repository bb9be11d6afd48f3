"""The model card a run leaves in its folder: ``README.md``, written at the end of the run.

Owns: :func:`model_card` (the Markdown text: what the model is, the data, the recipe, the test table of every
trained head, the attention picture, how to load it, versions and machine) and :func:`write_model_card`. The
card opens with the YAML block the Hugging Face Hub reads (library, task, tags, the headline metric), so the
folder can be uploaded as it is.

May import: ``racnn.config`` and ``racnn.modeling.heads``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from racnn.config import Config
from racnn.modeling.heads import head_names

CARD_FILE = "README.md"


def results_table(metrics: dict[str, Any], trained: list[str], num_scales: int) -> list[str]:
    """The test top-1 / top-5 of every trained head as Markdown table lines (heads in :func:`head_names` order)."""
    lines = ["| head | top-1 (%) | top-5 (%) |", "|---|---:|---:|"]
    for head in head_names(num_scales):
        if head not in trained or f"top1_{head}" not in metrics:
            continue
        top5 = metrics.get(f"top5_{head}")
        cells = f"{100 * metrics[f'top1_{head}']:.2f} | " + (f"{100 * top5:.2f}" if top5 is not None else "-")
        lines.append(f"| {_head_label(head, num_scales)} | {cells} |")
    return lines


def _head_label(head: str, num_scales: int) -> str:
    if head == "fused":
        return "**fused** (all scales; the answer)"
    if head == "avg":
        return "avg (mean of the scales' probabilities)"
    if head.startswith("s") and head[1:].isdigit():
        return f"scale {head[1:]}"
    return f"fusion {head}"


def _schedule(cfg: Config) -> str:
    train = cfg.train
    phases = [("warmup", train.warmup), ("apn_pretrain", train.apn_pretrain)]
    phases += [("cls", train.cls), ("apn", train.apn)] if train.rounds else []
    phases.append(("fusion", train.fusion))
    parts = [
        f"{kind}{' x' + str(train.rounds) if kind in ('cls', 'apn') else ''}: {p.epochs} ep, {p.optimizer} lr {p.lr:g}"
        for kind, p in phases
        if p.epochs > 0
    ]
    return "; ".join(parts)


def model_card(
    cfg: Config,
    record: dict[str, Any],
    metrics: dict[str, Any],
    trained: list[str],
    pictures: list[str],
    name: str,
) -> str:
    """The Markdown model card of a finished run.

    Args:
        cfg: the run's config.
        record: its ``run.json`` (:mod:`racnn.training.run_record`: versions, machine, splits, git, command).
        metrics: the test metrics of the chosen model (:func:`racnn.training.evaluate`'s keys).
        trained: the heads trained in that model.
        pictures: file names in the folder to show (the final attention picture first, then the curves).
        name: the run's name (the folder's).
    """
    model, data, num = cfg.model, cfg.data, cfg.model.num_scales
    fused = metrics.get("top1_fused") if "fused" in trained else None
    splits = record.get("splits") or {}
    versions = record.get("versions") or {}
    machine = record.get("machine") or {}
    git = record.get("git")
    lines = ["---", "library_name: racnn", "pipeline_tag: image-classification"]
    lines += ["tags:", "- racnn", "- fine-grained-classification", "- attention", f"- {data.dataset}"]
    if fused is not None:
        lines += ["model-index:", f"- name: {name}", "  results:", "  - task: {type: image-classification}"]
        lines += [f"    dataset: {{name: {data.dataset}, type: {data.dataset}, split: test}}"]
        lines += [f"    metrics: [{{type: accuracy, name: top-1 (fused), value: {100 * fused:.2f}}}]"]
    lines += ["---", "", f"# {name}: RA-CNN ({model.backbone}, {num} scales)", ""]
    lines += [
        f"A Recurrent Attention CNN (Fu et al., CVPR 2017) trained with racnn on "
        f"`{data.dataset}` ({model.num_classes} classes). Each scale classifies a zoom of the previous scale's "
        "attention box; the fused head, which combines the scales, gives the answer.",
        "",
        "## Results",
        "",
        f"Test split ({metrics.get('n_images', splits.get('test', '?'))} images), the model chosen on "
        f"{cfg.train.best_metric if splits.get('val') else 'the last epoch (no val split)'} "
        f"(epoch {metrics.get('chosen_epoch', '?')} of the run):",
        "",
        *results_table(metrics, trained, num),
        "",
    ]
    if pictures:
        lines += ["## Attention", ""] + [f"![{Path(p).stem}]({p})" for p in pictures] + [""]
    lines += ["## Data", ""]
    lines += [f"- data set: `{data.dataset}`" + (f", root `{data.root}`" if data.root else "")]
    counts = f"train {splits.get('train', '?')}, val {splits.get('val') or 0}, test {splits.get('test', '?')}"
    lines += [f"- images: {counts}"]
    lines += [
        "",
        "## Recipe",
        "",
        f"- model: backbone `{model.backbone}`, {num} scales, input {model.input_size} px, zooms {model.zoom_size} "
        f"px, {model.regions} region(s) per zoomed scale, pre-trained weights: {model.pretrained or 'none'}",
        f"- schedule: {_schedule(cfg)}; batch {data.batch_size}, precision {record.get('precision', cfg.train.amp)}, "
        f"seed {cfg.train.seed}",
        "- the whole config: [config.yaml](config.yaml); per epoch: [metrics.csv](metrics.csv); the test: "
        "[metrics.json](metrics.json); the log: [train.log](train.log); how it ran: [run.json](run.json)",
        "",
        "## How to use",
        "",
        "```python",
        "import racnn",
        "",
        'predictor = racnn.load("path/to/this/folder")  # reads model.safetensors',
        'print(predictor.predict("bird.jpg")[0])',
        "```",
        "",
        "```bash",
        "racnn predict --checkpoint path/to/this/folder bird.jpg",
        "racnn eval --checkpoint path/to/this/folder --set data.root=/path/to/the/data",
        "```",
        "",
        "## Made with",
        "",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- machine: {machine.get('cpu', '?')} ({machine.get('cpu_cores', '?')} cores)"
        + (f", GPU {', '.join(machine['cuda'])}" if machine.get("cuda") else "")
        + f"; device {machine.get('device', '?')}",
    ]
    if git:
        lines.append(f"- racnn source: git {git['commit']}" + (" (with uncommitted changes)" if git["dirty"] else ""))
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    if record.get("train_seconds") is not None:
        lines.append(f"- training time: {record['train_seconds'] / 60:.1f} min")
    lines.append(f"- run id: {record.get('run_id', '?')}")
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: Path, text: str) -> Path:
    path = Path(run_dir) / CARD_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
