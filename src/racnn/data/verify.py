"""Check a data set's layout, annotations and every image (:func:`verify_dataset`), and lay the findings out as a
table (:meth:`VerifyReport.format`). The command ``racnn data verify`` is :mod:`racnn.cli.verify`.

Beyond what building each split checks, the splits are compared: one file (by identity, or by content when two
files are byte for byte the same) in two splits is an error, since the test score would count a training image;
twice in one split it is counted twice. Object boxes are counted and checked against each image's size.
"""

from __future__ import annotations

import hashlib
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
        boxes: ``(images with an object box, images)`` over the splits checked; ``None`` for a layout without
            object boxes.
        notes: things worth knowing that do not fail the check, one line each (an object box that reaches past
            its image: official CUB has a few; racnn clips a box to its image wherever it uses one).
    """

    name: str
    root: str
    classes: list[str] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)
    boxes: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

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
        found = f"found for {self.boxes[0]} of {self.boxes[1]} images" if self.boxes and self.boxes[0] else "none"
        lines.append(f"Object boxes: {found}")
        if self.notes:
            lines.append(f"Notes ({len(self.notes)}, not problems):")
            lines += [f"  - {printable(n, keep_newlines=True)}" for n in self.notes]
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
    paths_by_split: dict[str, list[str]] = {}
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
        _count_boxes(report, dataset, workers)
        paths_by_split[split] = paths
    report.problems += _same_files(paths_by_split, workers)
    return report


def _count_boxes(report: VerifyReport, dataset: Any, workers: int) -> None:
    """Adds the split's object boxes to ``report.boxes`` and a note for each box that reaches past its image (used
    clipped to the image: official CUB has a few such boxes, so they are not problems)."""
    boxes = getattr(dataset, "boxes", None)
    if boxes is None:
        return
    found, total = report.boxes or (0, 0)
    report.boxes = (found + sum(box is not None for box in boxes), total + len(boxes))
    sizes = dataset.image_sizes().tolist()  # (height, width) from the headers; NaN for an unreadable file
    lines = getattr(dataset, "box_lines", None) or [0] * len(boxes)
    for path, box, (height, width), line in zip(dataset.paths, boxes, sizes, lines, strict=True):
        if box is None or height != height:  # no box, or an unreadable image (a bad file of its own)
            continue
        x, y, w, h = box
        if x + w > width + 2 or y + h > height + 2:  # slack for boxes rounded outward (CUB has 2 px overruns)
            where = f"bounding_boxes.txt line {line}" if line else "object box"
            report.notes.append(
                f"{where}: {path}: box x={x:g} y={y:g} w={w:g} h={h:g} reaches past the image ({width:g} x "
                f"{height:g}); used clipped to it"
            )


def _identity(path: str) -> tuple[int, int, int] | None:
    """``(device, inode, size)`` of the file a path leads to (through links), None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size


def _digest(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(2**20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _named(entries: list[tuple[str, str]], members: list[int]) -> str:
    more = f" and {len(members) - 4} more" if len(members) > 4 else ""
    return ", ".join(f"{entries[i][1]} ({entries[i][0]})" for i in members[:4]) + more


def _same_files(paths_by_split: dict[str, list[str]], workers: int) -> list[str]:
    """The images a data set lists twice under other names.

    Across splits an ERROR: one file (a link) or two byte-identical files (a copy) in train and test make the test
    score count a training image. Within a split, one file under two names (a link) is counted twice; copies within
    a split are left alone (a photo may be in a data set twice). Only files whose size one in another split shares
    are read.
    """
    entries = [(split, path) for split, paths in paths_by_split.items() for path in paths]
    with ThreadPoolExecutor(max_workers=min(max(1, workers), 64)) as pool:
        identities = list(pool.map(_identity, [path for _, path in entries]))
        by_file: dict[tuple[int, int], list[int]] = {}
        by_size: dict[int, list[int]] = {}
        for i, identity in enumerate(identities):
            if identity is not None:
                by_file.setdefault(identity[:2], []).append(i)
                by_size.setdefault(identity[2], []).append(i)
        candidates = [i for group in by_size.values() if len({entries[j][0] for j in group}) > 1 for i in group]
        digests = dict(zip(candidates, pool.map(_digest, [entries[i][1] for i in candidates]), strict=True))
    problems = []
    by_content: dict[str, list[int]] = {}
    for i in candidates:
        if digests[i] is not None:
            by_content.setdefault(digests[i], []).append(i)
    for members in by_content.values():
        splits = list(dict.fromkeys(entries[i][0] for i in members))
        if len(splits) > 1:
            problems.append(
                f"ERROR: one image in {' and '.join(splits)}: {_named(entries, members)}; the test score would count "
                "a training image"
            )
    for members in by_file.values():
        splits = list(dict.fromkeys(entries[i][0] for i in members))
        if len(members) > 1 and len(splits) == 1:
            problems.append(f"one file under {len(members)} names in {splits[0]}: {_named(entries, members)}")
    return problems
