"""The results table of an evaluation: which rows and columns it has, and its renderings to paste.

Owns: :func:`results_table` (an :func:`racnn.training.evaluation.evaluate` result -> :class:`Table`: a section of
heads, top-1 / top-5 per head, and a section of attention boxes, their statistics per zoomed scale and region) and
:data:`FORMATS`, the renderings ``text`` (what ``racnn eval`` prints), ``markdown``, ``csv``, ``latex`` and ``json``.

The columns of each section are lists of :class:`Column` (:data:`HEAD_COLUMNS`, :data:`BOX_COLUMNS`): a new metric
of the heads or the boxes (``box_<name>_s<s>`` keys) is one more entry there, and every format shows it. A value
the metrics lack is shown as ``-`` (``null`` in JSON).

May import: ``racnn.modeling.heads``; the standard library.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from racnn.modeling.heads import fusion_name, is_trained

__all__ = ["BOX_COLUMNS", "FORMATS", "HEAD_COLUMNS", "Column", "Section", "Table", "render", "results_table"]


@dataclass(frozen=True)
class Column:
    """One column: its title, the metric key for a row (``{row}`` replaced by the row's key), how it is shown.

    ``scale`` multiplies the stored value (100 for a fraction shown as a percentage); ``digits`` after the point.
    """

    title: str
    key: str
    scale: float = 1.0
    digits: int = 2
    width: int = 8  # the text rendering's column width


HEAD_COLUMNS = [Column("top-1 %", "top1_{row}", 100, 2), Column("top-5 %", "top5_{row}", 100, 2)]
BOX_COLUMNS = [  # racnn.training.box_scores: against the object boxes where known, spread over every image
    Column("side %", "box_side_{row}", 100, 1, width=7),
    Column("centre in %", "box_in_object_{row}", 100, 1, width=11),
    Column("covers %", "box_covers_object_{row}", 100, 1),
    Column("on obj. %", "box_on_object_{row}", 100, 1, width=9),
    Column("IoU", "box_iou_{row}", 1, 3, width=6),
    Column("std x", "box_centre_std_x_{row}", 1, 3, width=6),
    Column("std y", "box_centre_std_y_{row}", 1, 3, width=6),
    Column("std side", "box_side_std_{row}", 1, 3),
    Column("corr size", "box_side_corr_{row}", 1, 2, width=9),
]


@dataclass
class Section:
    """Rows of one kind (heads, attention boxes): ``rows`` are ``(label, key)``; ``notes`` per label."""

    title: str
    columns: list[Column]
    rows: list[tuple[str, str]]
    notes: dict[str, str] = field(default_factory=dict)

    def value(self, metrics: dict[str, Any], column: Column, key: str) -> float | None:
        raw = metrics.get(column.key.format(row=key))
        return None if raw is None else float(raw) * column.scale

    def cell(self, metrics: dict[str, Any], column: Column, key: str) -> str:
        value = self.value(metrics, column, key)
        return "-" if value is None else f"{value:.{column.digits}f}"


@dataclass
class Table:
    """An evaluation's table: its sections, the metrics they read, and the lines said under it."""

    sections: list[Section]
    metrics: dict[str, Any]
    footer: list[str]
    header: dict[str, str] = field(default_factory=dict)  # what was evaluated, how (checkpoint, precision, ...)


def results_table(
    metrics: dict[str, Any], num_scales: int, trained: list[str] | None = None, header: dict[str, str] | None = None
) -> Table:
    """The table of ``metrics`` (:func:`racnn.training.evaluation.evaluate`'s result) of a model with ``num_scales``.

    Heads not in ``trained`` (None: all) get the note "never trained: not an answer". ``header`` (e.g.
    ``{"checkpoint": ..., "precision": ...}``) is shown above the table in the text format and kept in JSON.
    """
    heads = [(f"scale {s}", f"s{s}") for s in range(1, num_scales + 1)]
    heads += [(name, name) for name in (fusion_name(n) for n in range(2, num_scales + 1))]
    heads.append(("mean prob.", "avg"))
    untrained = {label: "never trained: not an answer" for label, key in heads if not is_trained(key, trained)}
    # One row per zoomed scale, or per scale and region with model.regions > 1 (keys box_side_s2_r1, ...).
    boxes = [key.removeprefix("box_side_") for key in metrics if re.fullmatch(r"box_side_s\d+(_r\d+)?", key)]
    box_rows = [("box " + key.replace("_r", " r"), key) for key in boxes]
    footer = [f"{metrics['n_images']} images; ranking loss {metrics['rank_loss']:.4f}"]
    if "object_centre_std_x" in metrics:  # the yardstick of the boxes' spread
        footer.append(
            f"object boxes ({metrics['n_object_boxes']} images): size {metrics['object_size_mean']:.3f} "
            f"(std {metrics['object_size_std']:.3f}), centre std x {metrics['object_centre_std_x']:.3f} "
            f"y {metrics['object_centre_std_y']:.3f}; size = sqrt(area), in units of scale 1's side"
        )
    elif box_rows and not any(key.startswith("box_iou_") for key in metrics):
        footer.append("no object boxes in this data set: the boxes' spread only")
    overlaps = [key.removeprefix("region_iou_") for key in metrics if key.startswith("region_iou_s")]
    if overlaps:  # model.regions > 1: how far apart the regions stay (0: disjoint, 1: one box)
        footer.append("regions' mutual IoU: " + ", ".join(f"{k} {metrics[f'region_iou_{k}']:.3f}" for k in overlaps))
    sections = [Section("head", HEAD_COLUMNS, heads, untrained), Section("attention", BOX_COLUMNS, box_rows)]
    return Table(sections, metrics, footer, dict(header or {}))


def _text(table: Table) -> str:
    lines = [f"{name}: {value}" for name, value in table.header.items()]
    for index, section in enumerate(table.sections):
        lines.append(f"{section.title:<12} " + " ".join(f"{c.title:>{c.width}}" for c in section.columns))
        for label, key in section.rows:
            cells = " ".join(f"{section.cell(table.metrics, c, key):>{c.width}}" for c in section.columns)
            note = f"  ({section.notes[label]})" if label in section.notes else ""
            lines.append(f"{label:<12} {cells}{note}")
        if index == 0:  # as racnn eval has always printed it: the images and the ranking loss under the heads
            lines.append(table.footer[0])
    lines += table.footer[1:]
    return "\n".join(lines)


def _markdown(table: Table) -> str:
    blocks = []
    for section in table.sections:
        if not section.rows:
            continue
        lines = ["| " + " | ".join([section.title, *(c.title for c in section.columns)]) + " |"]
        lines.append("|---|" + "---:|" * len(section.columns))
        for label, key in section.rows:
            mark = " †" if label in section.notes else ""
            cells = [section.cell(table.metrics, c, key) for c in section.columns]
            lines.append("| " + " | ".join([label + mark, *cells]) + " |")
        blocks.append("\n".join(lines))
    notes = sorted({note for section in table.sections for note in section.notes.values()})
    blocks.append("\n".join([*table.footer, *(f"† {note}" for note in notes)]))
    return "\n\n".join(blocks)


def _csv(table: Table) -> str:
    columns = [c.title for section in table.sections for c in section.columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "row", *columns, "note"])
    for section in table.sections:
        for label, key in section.rows:
            cells = {c.title: section.cell(table.metrics, c, key) for c in section.columns}
            writer.writerow([section.title, label, *(cells.get(c, "") for c in columns), section.notes.get(label, "")])
    return buffer.getvalue().rstrip("\n")


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("&", r"\&"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def _latex(table: Table) -> str:
    blocks = []
    for section in table.sections:
        if not section.rows:
            continue
        lines = [r"\begin{tabular}{l" + "r" * len(section.columns) + "}", r"\toprule"]
        lines.append(
            " & ".join(_latex_escape(t) for t in [section.title, *(c.title for c in section.columns)]) + r" \\"
        )
        lines.append(r"\midrule")
        for label, key in section.rows:
            mark = r"$^\dagger$" if label in section.notes else ""
            cells = [section.cell(table.metrics, c, key) for c in section.columns]
            lines.append(" & ".join([_latex_escape(label) + mark, *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    notes = sorted({note for section in table.sections for note in section.notes.values()})
    blocks.append("\n".join(f"% {line}" for line in [*table.footer, *(f"dagger: {n}" for n in notes)]))
    return "\n\n".join(blocks)


def _json(table: Table) -> str:
    sections = {
        section.title: [
            {
                "row": label,
                "key": key,
                **{c.title: section.value(table.metrics, c, key) for c in section.columns},
                **({"note": section.notes[label]} if label in section.notes else {}),
            }
            for label, key in section.rows
        ]
        for section in table.sections
    }
    scalars = {
        k: v for k, v in table.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }  # the numbers as evaluate() gave them: fractions, unrounded
    return json.dumps({**table.header, "table": sections, "metrics": scalars}, indent=2)


FORMATS: dict[str, Callable[[Table], str]] = {
    "text": _text,
    "markdown": _markdown,
    "csv": _csv,
    "latex": _latex,
    "json": _json,
}


def render(table: Table, format: str = "text") -> str:
    """``table`` in ``format``, one of :data:`FORMATS`."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return FORMATS[format](table)
