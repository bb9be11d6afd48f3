"""The common ground of the file-based data sets: :class:`ImageDataset`, :class:`SkippedImagesWarning` and the
layout helpers the families share (``_require``, ``_read_id_table``, ``_display_name``, ``_load_mat``, ``_mat_ints``,
``_require_scipy``, ``_header_size``, ``_path_loader``, ``_torchvision_samples``, ``_resolve_parent``).

Every data set returns ``(image, label)`` (by default ``image`` is a float32 tensor ``(3, H, W)`` in [0, 1];
pass a transform from :func:`racnn.data.build_transforms` for training) and exposes ``name``, ``root``,
``split``, ``classes`` (display names), ``raw_classes`` (names as on disk), ``targets`` and ``samples``
(``(path, label)`` pairs). Labels are 0-based. Use :func:`racnn.data.build_dataset` to make one by name.

May import: :mod:`.io`, :mod:`.transforms` and third-party libraries. Never :mod:`.registry` or a family module
(:mod:`.cub`, :mod:`.dogs`, :mod:`.cars`, :mod:`.aircraft`, :mod:`.flowers`, :mod:`.folder`: they import this
one), nor anything outside :mod:`racnn.data`.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch.utils.data import Dataset

from racnn.safety import printable

from .io import (
    DatasetError,
    DatasetIntegrityError,
    DatasetLayoutError,
    ImageLoadError,
    MissingExtraError,
    check_image_file,
    load_image,
)
from .transforms import to_tensor

__all__ = ["DataProblemsWarning", "ImageDataset", "SkippedImagesWarning"]


class SkippedImagesWarning(UserWarning):
    """Unreadable image files were skipped (``skip_bad_files=True``)."""


class DataProblemsWarning(UserWarning):
    """Annotation problems were found and the entries concerned left out (``strict=False``)."""


_DEFAULT_TRANSFORM = to_tensor()


class ImageDataset(Dataset):
    """Common base: a list of ``(path, label)`` samples loaded with :func:`racnn.data.io.load_image`.

    Subclasses parse their layout and call :meth:`_set_samples`, which checks labels, duplicates and classes
    without training images. With ``strict=True`` (the default) any problem raises
    :class:`DatasetIntegrityError`; with ``strict=False`` the problems are kept in ``problems`` and the
    offending entries are dropped.

    Unreadable images: by default a bad file raises :class:`ImageLoadError` when it is loaded. With
    ``skip_bad_files=True`` every file is checked cheaply when the data set is built (header, end marker; see
    :func:`racnn.data.io.check_image_file`), bad ones are dropped and listed in ONE
    :class:`SkippedImagesWarning`; a file that still fails to decode later (corrupt data inside) is replaced by
    the next readable sample, so a DataLoader worker never crashes, and is recorded in ``bad_files``.

    Attributes:
        name: registry name of the data set.
        root: the folder the layout was read from.
        split: the split.
        samples: ``(path, label)`` pairs.
        targets: the labels, ``[label for _, label in samples]``.
        classes: display names of the classes, indexed by label.
        raw_classes: class names as written in the layout.
        problems: annotation problems found (always empty when ``strict=True``).
        bad_files: ``{path: reason}`` of skipped images (``skip_bad_files=True``).
    """

    name: ClassVar[str] = "images"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Any], Any] | None = None,
        *,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        if root is None:
            raise ValueError(f"data set {self.name!r} needs a root folder, got None")
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not available for {self.name!r}; available: {', '.join(self.splits)}")
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.skip_bad_files = skip_bad_files
        self.strict = strict
        self.samples: list[tuple[str, int]] = []
        self.targets: list[int] = []
        self.classes: list[str] = []
        self.raw_classes: list[str] = []
        self.problems: list[str] = []
        self.bad_files: dict[str, str] = {}
        self._bad_indices: set[int] = set()
        self._warned_at_load = False

    # -- construction helpers ------------------------------------------------------------------------------

    def _set_samples(
        self,
        samples: list[tuple[str, int]],
        classes: list[str],
        raw_classes: list[str] | None = None,
        problems: Iterable[str] = (),
        check_empty_classes: bool = True,
    ) -> None:
        """Stores the parsed samples after the common checks; raises or records problems; pre-checks files.

        The common checks: labels in range, no path twice, and (train split, ``check_empty_classes``) every
        class has at least one image.
        """
        problems = list(problems)
        num_classes = len(classes)
        kept, seen = [], set()
        root = os.path.abspath(self.root)
        for path, label in samples:
            if not _within(path, root):  # "../" or an absolute path in an annotation file
                problems.append(f"{path}: outside the data root {self.root}; not read")
            elif not 0 <= label < num_classes:
                problems.append(f"{path}: label {label} is out of range 0..{num_classes - 1} (0-based)")
            elif path in seen:
                problems.append(f"{path}: listed more than once in split {self.split!r}")
            else:
                seen.add(path)
                kept.append((path, label))
        if self.split == "train" and check_empty_classes:
            counts = Counter(label for _, label in kept)
            problems += [
                f"class {classes[c]!r} (label {c}) has no training images" for c in range(num_classes) if not counts[c]
            ]
        if not kept and not problems:  # found now, not after a training epoch, by an evaluation of nothing
            problems.append(f"split {self.split!r} has no images")
        problems = list(dict.fromkeys(problems))  # drop repeats, keep order
        if problems and self.strict:
            raise DatasetIntegrityError(self.name, self.root, problems)
        if problems:
            self._warn_problems(problems)
        self.problems = problems
        self.classes = list(classes)
        self.raw_classes = list(raw_classes) if raw_classes is not None else list(classes)
        self.samples = kept
        if self.skip_bad_files:
            self._drop_bad_files()
        self.targets = [label for _, label in self.samples]

    def _warn_problems(self, problems: list[str]) -> None:
        """``strict=False`` keeps going without the entries concerned; it must not do so silently (a class missing
        from train, or an empty one, changes what the model learns)."""
        listed = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        warnings.warn(
            printable(
                f"{self.name} ({self.split}) under {self.root}: {len(problems)} problem(s), the entries concerned are "
                f"left out (strict=False): {listed}. dataset.problems lists them all; `racnn data verify` reports them."
            ),
            DataProblemsWarning,
            stacklevel=4,
        )

    def _drop_bad_files(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(check_image_file, [path for path, _ in self.samples]))
        bad = {path: reason for (path, _), reason in zip(self.samples, reasons, strict=True) if reason}
        if not bad:
            return
        self.bad_files.update(bad)
        total = len(self.samples)
        self.samples = [s for s in self.samples if s[0] not in bad]
        listed = "; ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(
            printable(
                f"{self.name} ({self.split}): skipped {len(bad)} unreadable image file(s) of {total}: {listed}{more}. "
                "The full list is in dataset.bad_files."
            ),
            SkippedImagesWarning,
            stacklevel=4,
        )

    # -- access ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self._load(index)
        transform = self.transform if self.transform is not None else _DEFAULT_TRANSFORM
        return transform(image), label

    def _load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        index %= len(self.samples)  # negative indices name the same sample as their positive twin
        if index not in self._bad_indices:
            try:
                return load_image(path, self.name), label
            except ImageLoadError as error:
                if not self.skip_bad_files:
                    raise
                self._record_bad(index, error)
        # Replace a bad sample by the next readable one, so a DataLoader worker keeps going.
        n = len(self.samples)
        for offset in range(1, n):
            other = (index + offset) % n
            if other in self._bad_indices:
                continue
            other_path, other_label = self.samples[other]
            try:
                return load_image(other_path, self.name), other_label
            except ImageLoadError as error:
                self._record_bad(other, error)
        raise DatasetError(f"{self.name} ({self.split}): no readable image left among {n} samples under {self.root}")

    def _record_bad(self, index: int, error: ImageLoadError) -> None:
        self._bad_indices.add(index)
        self.bad_files[error.path] = error.reason
        if not self._warned_at_load:
            self._warned_at_load = True
            warnings.warn(
                printable(
                    f"{self.name} ({self.split}): {error}; replaced by the next readable sample. Further unreadable "
                    "files are replaced without a warning and listed in dataset.bad_files (per process)."
                ),
                SkippedImagesWarning,
                stacklevel=4,
            )

    @property
    def paths(self) -> list[str]:
        """Image paths, aligned with ``targets``."""
        return [path for path, _ in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Display class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, classes={self.num_classes})"
        )


# -- layout helpers ----------------------------------------------------------------------------------------------


def _require(dataset: str, root: Path, expected: list[str], required: list[str]) -> None:
    """Raises :class:`DatasetLayoutError` listing ``expected`` when any of ``required`` (relative paths;
    a trailing ``/`` means a folder) is missing under ``root``."""
    missing = []
    for rel in required:
        path = root / rel.rstrip("/")
        if not (path.is_dir() if rel.endswith("/") else path.is_file()):
            missing.append(rel)
    if missing:
        raise DatasetLayoutError(dataset, root, expected, missing)


def _read_id_table(
    path: Path, num_values: int, problems: list[str], lines: dict[int, int] | None = None
) -> dict[int, list[str]]:
    """Reads a CUB-style ``ID VALUE...`` text file; malformed lines and duplicate ids go to ``problems``.

    With ``num_values == 1`` the value is the rest of the line (it may hold spaces). ``lines``, when given, is
    filled with each id's line number, so later checks of a value can name its line.
    """
    table: dict[int, list[str]] = {}
    first_line: dict[int, int] = {} if lines is None else lines
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:  # a binary or wrongly encoded file: named, not a traceback without a name
        problems.append(f"{path.name}: not a UTF-8 text file (byte {e.start} cannot be decoded)")
        return table
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            fields = text.split(maxsplit=1) if num_values == 1 else text.split()
            if len(fields) != num_values + 1 or not re.fullmatch(r"\d+", fields[0]):
                problems.append(
                    f"{path.name} line {line_number}: expected 'ID' and {num_values} value(s), got {text!r}"
                )
                continue
            image_id = int(fields[0])
            if image_id in table:
                problems.append(
                    f"{path.name} line {line_number}: duplicate id {image_id} (first on line {first_line[image_id]})"
                )
                continue
            table[image_id] = fields[1:]
            first_line[image_id] = line_number
    return table


def _within(path: str, root: str) -> bool:
    """Whether ``path`` stays inside the absolute folder ``root`` by its spelling (no ``..`` out, not absolute
    elsewhere). Links are the folder scan's business (:mod:`.folder`)."""
    full = os.path.abspath(path)  # sample paths are the root joined with the listed name
    return full == root or full.startswith(root.rstrip(os.sep) + os.sep)


def _display_name(raw: str, prefix: str) -> str:
    return re.sub(prefix, "", raw).replace("_", " ")


def _require_scipy(dataset: str) -> None:
    """scipy reads the MATLAB annotation files of Stanford Dogs, Stanford Cars and Flowers-102; it is an extra."""
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f'the {dataset} layout reads MATLAB (.mat) annotation files, which needs scipy: pip install "racnn[mat]"'
        ) from None


def _load_mat(path: Path, dataset: str, root: Path) -> dict[str, Any]:
    _require_scipy(dataset)
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as error:  # scipy raises several types (ValueError, TypeError, MatReadError) on bad files
        raise DatasetIntegrityError(dataset, root, [f"{path}: cannot read MATLAB file ({error})"]) from error


def _mat_ints(values: Any, where: str, dataset: str, root: Path) -> list[int]:
    """The whole numbers of a MATLAB array (labels, image ids), or a :class:`DatasetIntegrityError` naming
    ``where`` and the first value that is not one (``int()`` of NaN raised a ValueError, of 1.5 gave 1)."""
    import numpy as np

    flat = np.ravel(values)
    try:
        numbers = flat.astype(np.float64)
    except (TypeError, ValueError):
        raise DatasetIntegrityError(dataset, root, [f"{where}: holds values that are not numbers"]) from None
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if bad.any():
        first = int(np.argmax(bad))
        value = flat[first].item() if hasattr(flat[first], "item") else flat[first]
        problem = f"{where}: entry {first + 1} is {value!r}, not a whole number ({int(bad.sum())} such entries)"
        raise DatasetIntegrityError(dataset, root, [problem])
    return [int(v) for v in numbers]


def _header_size(path: str) -> tuple[float, float]:
    """``(height, width)`` from the image header, NaN when the file cannot be opened."""
    try:
        with Image.open(path) as image:
            return float(image.height), float(image.width)
    except (OSError, ValueError, SyntaxError):
        return float("nan"), float("nan")


def _path_loader(path: str | os.PathLike) -> str:
    """A torchvision ``loader`` that returns the path, so indexing a torchvision data set decodes nothing."""
    return str(path)


def _torchvision_samples(cls: type, **kwargs: Any) -> tuple[Any, list[tuple[str, int]]]:
    """Builds a torchvision data set and reads its ``(path, label)`` list without decoding any image."""
    if "loader" in inspect.signature(cls).parameters:
        dataset = cls(**kwargs, loader=_path_loader)
        return dataset, [(str(path), int(label)) for path, label in (dataset[i] for i in range(len(dataset)))]
    dataset = cls(**kwargs)  # torchvision < 0.21: no loader argument, read the parsed lists instead
    if hasattr(dataset, "_samples"):
        return dataset, [(str(p), int(y)) for p, y in dataset._samples]
    return dataset, [(str(p), int(y)) for p, y in zip(dataset._image_files, dataset._labels, strict=True)]


def _resolve_parent(root: Path, folder: str) -> Path:
    """Accepts either the torchvision root or the data set's own folder inside it."""
    if not (root / folder).is_dir() and root.name == folder:
        return root.parent
    return root
