"""A generic split-per-folder layout (``train/<class>/*``, ``val/`` or ``test/``): :class:`ImageFolderSplits`,
registered as ``"folder"``.

Owns the class-folder scan and the val / test fallback.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
        for folder in sorted(d for d in self.split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if folder.name not in class_index:
                problems.append(
                    f"{self.split_dir.name}/{folder.name}: class folder not in train/ (train has {len(raw_classes)})"
                )
                continue
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                dirnames.sort()
                samples += [
                    (os.path.join(dirpath, f), class_index[folder.name])
                    for f in sorted(filenames)
                    if f.lower().endswith(suffixes) and not f.startswith(".")
                ]
        self._set_samples(samples, raw_classes, problems=problems)
