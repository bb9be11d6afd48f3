"""Training curves and confusion matrices as PNG files (matplotlib's Agg canvas, no pyplot global state)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_confusion_matrix", "plot_training_curves", "training_curves_figure"]

_PHASE_COLOURS = {
    "warmup": "#dddddd",
    "apn_pretrain": "#fde3c8",
    "cls": "#d9e8f5",
    "apn": "#fbd5d5",
    "fusion": "#dcefd9",
}
_PHASE_NAMES = {"warmup": "warm-up", "apn_pretrain": "APN pre-train", "cls": "cls", "apn": "apn (rank)"}

# One colour per scale in both panels (cls<s> and rank/APN losses of the box of scale s; accuracy s<s>), matching
# the box colours of the attention pictures (scale 2 red, scale 3 green, scale 4 blue); scale 1 has no box.
_SCALE_COLOURS = {1: "#404040", 2: "#d62728", 3: "#2ca02c", 4: "#1f77b4"}
# The fusion heads and the mean of the scales: colours no scale uses.
_HEAD_COLOURS = {"1+2": "#9467bd", "1+2+3": "#ff7f0e", "1+2+3+4": "#8c564b", "avg": "#17becf"}
_FALLBACK = ("#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8")


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def _phase_spans(history: Sequence[dict[str, Any]]) -> list[tuple[int, int, str, str]]:
    """``(first epoch, last epoch, phase kind, label)`` of each phase's run of epochs (epochs count from 1)."""
    spans, start = [], 1
    for i, row in enumerate(history):
        if i + 1 == len(history) or history[i + 1]["phase_index"] != row["phase_index"]:
            kind = row["phase"]
            label = _PHASE_NAMES.get(kind, kind) + (f" {row['round']}" if kind in ("cls", "apn") else "")
            spans.append((start, i + 1, kind, label))
            start = i + 2
    return spans


def _shade_phases(ax, history: Sequence[dict[str, Any]], width_px: float) -> float:
    """Shade each phase's span of epochs and name it above the plot (upright where it fits, else turned).

    Returns:
        The height in points the names take above the axes (for the title's padding).
    """
    per_epoch = width_px / max(len(history), 1)
    above = 2.0
    for first, last, kind, label in _phase_spans(history):
        ax.axvspan(first - 0.5, last + 0.5, color=_PHASE_COLOURS.get(kind, "#eeeeee"), lw=0, zorder=0)
        turned = 5.0 * len(label) > per_epoch * (last - first + 1)  # ~5 px a character at 7 pt
        ax.text(
            (first + last) / 2,
            1.01,
            label,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if turned else 0,
            clip_on=False,
        )
        above = max(above, 4.0 * len(label) + 4 if turned else 10.0)
    return above


def _style(name: str) -> dict[str, Any]:
    """Line colour, style and marker of a loss or head name: the same colour for the same scale everywhere."""
    match = re.fullmatch(r"(cls|s|rank|apn_pre)(\d+)", name)
    if match:
        kind, n = match.group(1), int(match.group(2))
        scale = n if kind in ("cls", "s") else n + 1  # rank<n> and apn_pre<n> train the box of scale n + 1
        styles = {"cls": ("-", "o"), "s": ("-", "o"), "rank": ("--", "v"), "apn_pre": (":", "s")}
        line, marker = styles[kind]
        colour = _SCALE_COLOURS.get(scale, _FALLBACK[scale % len(_FALLBACK)])
        return {"color": colour, "linestyle": line, "marker": marker, "markersize": 4}
    head = name.removeprefix("fuse").removesuffix(" = fused")
    colour = _HEAD_COLOURS.get(head, _FALLBACK[len(head) % len(_FALLBACK)])
    dashed = head == "avg"  # the mean of the scales, not a trained head of its own
    return {"color": colour, "linestyle": "--" if dashed else "-", "marker": "D", "markersize": 4, "zorder": 3}


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`training_curves_figure` of ``history`` to the PNG ``path``; returns ``path``."""
    path = Path(path)
    training_curves_figure(history).savefig(path)
    return path


def training_curves_figure(history: Sequence[dict[str, Any]]):
    """Losses (top) and validation top-1 per trained head (bottom) over epochs, with the phases shaded and named.

    A scale has one colour in both panels (its ``cls`` loss, the ``rank`` / ``apn_pre`` losses of its box, its
    ``s`` accuracy), the fusion heads and ``avg`` their own. ``fused`` is the all-scale fusion head under another
    name: it is drawn once, as e.g. ``1+2+3 = fused``.

    Args:
        history: one dict per epoch as :func:`racnn.training.fit` records it (keys ``phase``, ``phase_index``,
            ``round``, ``train_*`` losses, ``val_top1_*`` validation metrics of the trained heads).

    Returns:
        A matplotlib ``Figure`` (Agg canvas) with the two axes.
    """
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = _figure(10, 6.5, rows=2)
    epochs = list(range(1, len(history) + 1))
    keys = {k for row in history for k in row}
    num_scales = max([int(k[len("val_top1_s") :]) for k in keys if k[len("val_top1_s") :].isdigit()] or [0])
    all_scales = "+".join(str(s) for s in range(1, num_scales + 1))

    def series(key: str, factor: float = 1.0) -> list[tuple[int, float]]:
        return [(e, factor * row[key]) for e, row in zip(epochs, history, strict=True) if _number(row.get(key))]

    for key in sorted(k for k in keys if k.startswith("train_") and _is_loss(k)):
        name = key.removeprefix("train_")
        if points := series(key):
            ax_loss.plot(*zip(*points, strict=True), label=name, **_style(name))
    heads = sorted(k.removeprefix("val_top1_") for k in keys if k.startswith("val_top1_"))
    val = {}  # name -> its (epoch, top-1 %) points
    for head in heads:
        if head == "fused" and num_scales > 1 and all_scales in heads:
            continue  # the same numbers as the all-scale fusion head, drawn under that name
        if points := series(f"val_top1_{head}", 100.0):
            val[f"{head} = fused" if head == all_scales else head] = points
    titles = ["training loss (mean over the epoch)", "validation top-1 (%), trained heads"]
    once = {points[0][0] for points in val.values()} if all(len(p) == 1 for p in val.values()) else set()
    if val and len(once) == 1:  # validated once (train.eval_interval=-1): one bar per head with its value
        titles[1] = f"validation top-1 (%) of the trained heads at epoch {once.pop()} (validated once)"
        _value_bars(ax_acc, val)
    else:
        for name, points in val.items():
            ax_acc.plot(*zip(*points, strict=True), label=name, **_style(name))
            if len(points) == 1:  # a lone point: its value beside it
                ax_acc.annotate(f"{points[0][1]:.1f}", points[0], xytext=(6, 0), textcoords="offset points",
                                va="center", fontsize=7, color=_style(name)["color"])  # fmt: skip
    width_px = fig.get_figwidth() * fig.dpi * 0.8  # the axes' share of the figure, beside the legends
    for ax, title in zip((ax_loss, ax_acc), titles, strict=True):
        if ax is ax_acc and val and not ax.get_lines():  # the bars: their own axes, no epochs
            ax.set_title(title, fontsize=9)
            continue
        above = _shade_phases(ax, history, width_px)
        if ax is ax_loss and ax.get_lines():
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9, pad=above + 4)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(len(history), 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def _value_bars(ax, val: dict[str, list[tuple[int, float]]]) -> None:
    """One horizontal bar per head, its value written at its end (the val panel of a run validated once)."""
    names = sorted(val, key=_head_order)
    values = [val[name][0][1] for name in names]
    colours = [_style(name)["color"] for name in names]
    bars = ax.barh(range(len(names)), values, color=colours, height=0.6)
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100 * 1.08)
    ax.set_xlabel("top-1 (%)")


def _head_order(name: str) -> tuple[int, int]:
    """Scales first (s1, s2, ...), then the fusion heads by size, then the mean of the scales."""
    if re.fullmatch(r"s\d+", name):
        return (0, int(name[1:]))
    return (2, 0) if name == "avg" else (1, name.count("+"))


def _is_loss(key: str) -> bool:
    """A named loss of the epoch (not the phase's sum ``train_loss``, nor accuracy, lr, speed, step count)."""
    return key != "train_loss" and not key.startswith(("train_acc", "train_lr", "train_images_per_s", "train_steps"))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value  # not None, not NaN


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG.

    Class names label the axes when there are at most 40 classes; beyond that only indices are shown.
    """
    import numpy as np

    path = Path(path)
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(counts)
    side = min(4 + 0.25 * n, 20)
    fig, (ax,) = _figure(side + 1, side)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if n <= 40:  # plain text, not mathtext: a class folder named "a$\foo$" stopped a run at its last step
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=6, parse_math=False)
        ax.set_yticks(range(n), list(class_names), fontsize=6, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} images)", fontsize=9)
    fig.savefig(path)
    return path
