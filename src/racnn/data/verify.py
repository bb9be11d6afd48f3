"""Check a data set's layout, annotations and every image (:func:`verify_dataset`), and lay the findings out as a
table (:meth:`VerifyReport.format`). The command ``racnn data verify`` is :mod:`racnn.cli.verify`.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from racnn.safety import printable

from .base import DataProblemsWarning
from .io import DatasetError, DatasetIntegrityError, DatasetLayoutError, check_image_file
from .registry import DATASETS, build_dataset, dataset_names

__all__ = ["SplitStats", "VerifyReport", "verify_dataset"]


@dataclass
class SplitStats:
    """Counts for one split.

    Attributes:
        split: the split name.
        num_images: number of images listed (bad files included).
        num_classes_present: classes with at least one image.
        fewest: ``(count, class name)`` of the class with the fewest images (0 when a class has none).
        most: ``(count, class name)`` of the class with the most images.
        num_bad: images that failed the check.
    """

    split: str
    num_images: int
    num_classes_present: int
    fewest: tuple[int, str]
    most: tuple[int, str]
    num_bad: int = 0


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found.

    Attributes:
        name: the data set name.
        root: the root folder.
        classes: the class names (empty when nothing could be read).
        splits: per-split counts.
        problems: layout and annotation problems, one line each.
        bad_files: ``{path: reason}`` of images that failed to open or decode.
    """

    name: str
    root: str
    classes: list[str] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem and no bad file was found."""
        return not self.problems and not self.bad_files

    def format(self, max_bad_files: int = 50) -> str:
        """The report as text: a table of splits, then bad files, problems and the verdict."""
        # Class and file names come from the data set: printed with control characters escaped.
        lines = [f"Data set: {self.name}    root: {printable(self.root)}    classes: {len(self.classes)}", ""]
        header = ("split", "images", "classes", "fewest per class", "most per class", "bad files")
        rows = [
            (
                s.split,
                str(s.num_images),
                f"{s.num_classes_present}/{len(self.classes)}",
                f"{s.fewest[0]} ({printable(s.fewest[1])})",
                f"{s.most[0]} ({printable(s.most[1])})",
                str(s.num_bad),
            )
            for s in self.splits.values()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        lines.append("")
        if self.bad_files:
            lines.append(f"Bad files ({len(self.bad_files)}):")
            shown = list(self.bad_files.items())[:max_bad_files]
            lines += [f"  {printable(path)}: {printable(reason)}" for path, reason in shown]
            if len(self.bad_files) > max_bad_files:
                lines.append(f"  ... and {len(self.bad_files) - max_bad_files} more")
        else:
            lines.append("Bad files: none")
        if self.problems:
            lines.append(f"Problems ({len(self.problems)}):")
            lines += [f"  - {printable(p, keep_newlines=True)}" for p in self.problems]
        else:
            lines.append("Problems: none")
        issues = len(self.problems) + len(self.bad_files)
        lines.append("Result: OK" if self.ok else f"Result: FAILED ({issues} issue(s))")
        return "\n".join(lines)


def _default_splits(name: str, root: str | os.PathLike | None, options: dict[str, Any]) -> list[str]:
    if name == "folder":
        found = [s for s in ("val", "test") if root is not None and (Path(root) / s).is_dir()]
        return ["train", *(found or ["test"])]
    splits = list(getattr(DATASETS[name], "splits", ("train", "test")))
    if "val" in splits and options.get("merge_val", True):
        splits.remove("val")
    return splits


def _split_stats(split: str, targets: list[int], classes: list[str], num_bad: int) -> SplitStats:
    counts = Counter(targets)
    per_class = [(counts[c], classes[c]) for c in range(len(classes))] or [(0, "-")]
    fewest = min(per_class, key=lambda item: item[0])
    most = max(per_class, key=lambda item: item[0])
    return SplitStats(split, len(targets), sum(1 for n, _ in per_class if n), fewest, most, num_bad)


def verify_dataset(
    name: str,
    root: str | os.PathLike | None,
    splits: list[str] | None = None,
    full: bool = True,
    workers: int = 4,
    **options: Any,
) -> VerifyReport:
    """Checks a data set: layout files, ids, labels, classes, and every image.

    Args:
        name: a name from :func:`racnn.data.dataset_names`.
        root: the data set's root folder.
        splits: the splits to check; default every split of the layout.
        full: open every image with ``PIL.Image.verify`` and decode it fully; False only reads headers and end
            markers (:func:`racnn.data.io.check_image_file`).
        workers: threads used to check images.
        **options: data set options passed to :func:`racnn.data.build_dataset` (``strict`` is forced off so
            that every problem is listed instead of raised).

    Returns:
        The report; ``report.ok`` tells whether anything is wrong.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    report = VerifyReport(name=name, root=str(root))
    options = dict(options)
    if name != "synthetic":
        options.update(strict=False, skip_bad_files=False)
    for split in splits or _default_splits(name, root, options):
        try:
            with warnings.catch_warnings():  # the problems are the report's, not a warning's
                warnings.simplefilter("ignore", DataProblemsWarning)
                dataset = build_dataset(name, root, split, **options)
        except DatasetLayoutError as error:
            report.problems.append(f"[{split}] {error}")
            continue
        except DatasetIntegrityError as error:
            report.problems += [f"[{split}] {p}" for p in error.problems]
            continue
        except (DatasetError, ValueError) as error:
            report.problems.append(f"[{split}] {error}")
            continue
        report.classes = report.classes or list(dataset.classes)
        report.problems += [p for p in getattr(dataset, "problems", []) if p not in report.problems]
        num_bad = 0
        paths = [path for path, _ in getattr(dataset, "samples", [])]
        if paths:
            with ThreadPoolExecutor(max_workers=min(max(1, workers), 64)) as pool:  # --workers 100000: 64
                reasons = list(pool.map(partial(check_image_file, full=full), paths))
            for path, reason in zip(paths, reasons, strict=True):
                if reason is not None:
                    report.bad_files[path] = reason
                    num_bad += 1
        report.splits[split] = _split_stats(split, list(dataset.targets), list(dataset.classes), num_bad)
    return report
