"""A generic split-per-folder layout (``train/<class>/*``, ``val/`` or ``test/``): :class:`ImageFolderSplits`,
registered as ``"folder"``.

Owns the class-folder scan and the val / test fallback.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import ImageDataset, _require
from .io import IMG_EXTENSIONS, DatasetLayoutError
from .registry import register_dataset

__all__ = ["ImageFolderSplits"]


@register_dataset("folder")
class ImageFolderSplits(ImageDataset):
    """A generic split-per-folder layout: ``root/train/<class>/*`` and ``root/val/<class>/*`` or
    ``root/test/<class>/*``.

    Classes are the folder names under ``train/``, sorted. ``"test"`` falls back to ``val/`` when there is no
    ``test/`` and vice versa. A class folder in val/test that is not in train is a problem. Images are found
    recursively inside each class folder, by extension (case-insensitive).

    Args:
        root: the folder holding ``train/`` and ``val/`` or ``test/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        extensions: file name endings counted as images.
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).

    Attributes:
        split_dir: the folder the split was read from.
    """

    name = "folder"
    splits = ("train", "val", "test")
    expected = ["train/<class>/<image>", "val/<class>/<image> or test/<class>/<image>"]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        root = self.root
        _require(self.name, root, self.expected, ["train/"])
        raw_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
        if not raw_classes:
            raise DatasetLayoutError(self.name, root, self.expected, ["train/<class>/ (no class folders)"])
        if split == "train":
            self.split_dir = root / "train"
        else:
            candidates = [split, "val" if split == "test" else "test"]
            found = next((c for c in candidates if (root / c).is_dir()), None)
            if found is None:
                raise DatasetLayoutError(self.name, root, self.expected, [f"{c}/" for c in candidates])
            self.split_dir = root / found
        class_index = {c: i for i, c in enumerate(raw_classes)}
        suffixes = tuple(e.lower() for e in extensions)
        problems, samples = [], []
        folders = sorted(d for d in self.split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        scan = _LinkSafeScan(root, [self.split_dir, *folders], suffixes, problems)
        for folder in folders:
            if folder.name not in class_index:
                problems.append(
                    f"{self.split_dir.name}/{folder.name}: class folder not in train/ (train has {len(raw_classes)})"
                )
                continue
            samples += [(path, class_index[folder.name]) for path in scan.files(folder)]
        self._set_samples(samples, raw_classes, problems=problems)


class _LinkSafeScan:
    """The image files under class folders, found recursively, following each link at most once and never out
    of the data root.

    ``os.walk(followlinks=True)`` has no cycle check: a link ``train/classA/up -> ..`` made classA swallow every
    other class's images about 40 times over (until the path grew too long). Here every folder is read once, by
    its real path: a link to a folder already read (an ancestor: a loop; another class folder: its images under
    two labels) is skipped, and so is a link whose target lies outside the root, and a second name for a file
    already found. Each skip is a problem, raised with ``strict=True`` and listed by ``racnn data verify``.
    """

    def __init__(self, root: Path, owned: list[Path], suffixes: tuple[str, ...], problems: list[str]) -> None:
        self.root = os.path.realpath(root)
        self.suffixes = suffixes
        self.problems = problems
        self.visited = {os.path.realpath(folder) for folder in owned}  # the split and its class folders
        self.found: dict[str, str] = {}  # real path of a file -> the path it was first found under

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def files(self, folder: Path) -> list[str]:
        """The image files under ``folder``: sorted, each folder's files before its sub-folders' (as os.walk)."""
        real = os.path.realpath(folder)
        if not self._inside(real):
            self.problems.append(f"{folder}: a link to {real}, outside the data root {self.root}; not read")
            return []
        out: list[str] = []
        stack = [(str(folder), real)]
        while stack:
            path, real = stack.pop()
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as e:  # os.walk skipped such a folder without a word
                self.problems.append(f"{path}: cannot read the folder ({e.strerror or e}); its images are left out")
                continue
            out += [f for f in (self._file(e, real) for e in entries) if f is not None]
            below = [d for d in (self._folder(e, real) for e in entries) if d is not None]
            stack += reversed(below)
        return out

    def _folder(self, entry: os.DirEntry, parent_real: str) -> tuple[str, str] | None:
        if not entry.is_dir():  # follows links: a link to a folder is a folder here
            return None
        real = os.path.realpath(entry.path)
        if not self._inside(real):
            self.problems.append(f"{entry.path}: a link to {real}, outside the data root {self.root}; not followed")
            return None
        if parent_real == real or parent_real.startswith(real.rstrip(os.sep) + os.sep):
            self.problems.append(f"{entry.path}: a link loop (back to {real}, a folder above it); not followed")
            return None
        if real in self.visited:
            self.problems.append(f"{entry.path}: a link to a folder already read ({real}); not followed again")
            return None
        self.visited.add(real)
        return entry.path, real

    def _file(self, entry: os.DirEntry, folder_real: str) -> str | None:
        name = entry.name
        if name.startswith(".") or not name.lower().endswith(self.suffixes) or entry.is_dir():
            return None
        real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(folder_real, name)
        if not self._inside(real):
            self.problems.append(f"{entry.path}: a link to {real}, outside the data root {self.root}; not read")
            return None
        if real in self.found:
            self.problems.append(f"{entry.path}: the same file as {self.found[real]}; read once")
            return None
        self.found[real] = entry.path
        return entry.path
