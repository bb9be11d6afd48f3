"""Training curves and confusion matrices as PNG files (matplotlib's Agg canvas, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_confusion_matrix", "plot_training_curves"]

_PHASE_COLOURS = {
    "warmup": "#dddddd",
    "apn_pretrain": "#fde3c8",
    "cls": "#d9e8f5",
    "apn": "#fbd5d5",
    "fusion": "#dcefd9",
}


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def _shade_phases(ax, history: Sequence[dict[str, Any]]) -> None:
    """Shade each phase's span of epochs and name it once at the top."""
    start = 0
    for i, row in enumerate(history):
        last = i + 1 == len(history) or history[i + 1]["phase_index"] != row["phase_index"]
        if last:
            ax.axvspan(start + 0.5, i + 1.5, color=_PHASE_COLOURS.get(row["phase"], "#eeeeee"), lw=0, zorder=0)
            label = row["phase"] + (f" {row['round']}" if row["phase"] in ("cls", "apn") else "")
            ax.text(
                (start + i + 2) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7
            )
            start = i + 1


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Losses (top) and validation top-1 per trained head (bottom) over epochs, with the phases shaded.

    Args:
        history: one dict per epoch as :func:`racnn.training.fit` records it (keys ``phase``, ``phase_index``,
            ``round``, ``train_*`` losses, ``val_top1_*`` validation metrics of the trained heads).
        path: where to write the PNG.

    Returns:
        ``path``.
    """
    path = Path(path)
    fig, (ax_loss, ax_acc) = _figure(9, 6, rows=2)
    epochs = list(range(1, len(history) + 1))
    loss_keys = sorted({k for row in history for k in row if k.startswith("train_") and _is_loss(k)})
    for key in loss_keys:
        points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if _number(row.get(key))]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("train_"))
    acc_keys = sorted(k for k in {k for row in history for k in row} if k.startswith("val_top1_"))
    for key in acc_keys:
        points = [(e, 100 * row[key]) for e, row in zip(epochs, history, strict=True) if _number(row.get(key))]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("val_top1_"))
    titles = ("training loss (mean over the epoch)", "validation top-1 (%), trained heads")
    for ax, title in zip((ax_loss, ax_acc), titles, strict=True):
        _shade_phases(ax, history)
        if ax is ax_loss and loss_keys:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncols=4, loc="lower left")
    fig.savefig(path)
    return path


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
