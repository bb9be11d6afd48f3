"""Stanford Dogs in its official layout: :class:`StanfordDogs`, registered as ``"dogs"``.

Owns the reading of ``Images/<wnid>-<breed>/`` and the ``lists/*_list.mat`` split lists.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import ImageDataset, _display_name, _load_mat, _mat_ints
from .io import DatasetIntegrityError, DatasetLayoutError
from .registry import register_dataset

__all__ = ["StanfordDogs"]


@register_dataset("dogs")
class StanfordDogs(ImageDataset):
    """Stanford Dogs in its official layout.

    ``root`` holds ``Images/<wnid>-<breed>/*.jpg`` and the split lists ``lists/train_list.mat`` and
    ``lists/test_list.mat`` (also accepted directly under ``root``, as the ``lists.tar`` archive extracts),
    each with ``file_list`` (paths relative to ``Images/``) and ``labels`` (1-based). Class ``k`` is the
    ``k``-th class folder in sorted order, as in the official lists. Note that the Dogs images come from
    ImageNet: ImageNet-pretrained backbones have seen its test images.

    Args:
        root: the Stanford Dogs folder.
        split: ``"train"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).
    """

    name = "dogs"
    splits = ("train", "test")
    expected = [
        "Images/<wnid>-<breed>/<image>.jpg",
        "lists/train_list.mat  (or train_list.mat; fields file_list, labels 1-based)",
        "lists/test_list.mat   (or test_list.mat)",
    ]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        root = self.root
        list_name = f"{split}_list.mat"
        list_file = next((p for p in (root / "lists" / list_name, root / list_name) if p.is_file()), None)
        missing = ([] if (root / "Images").is_dir() else ["Images/"]) + ([] if list_file else [f"lists/{list_name}"])
        if missing:
            raise DatasetLayoutError(self.name, root, self.expected, missing)
        raw_classes = sorted(d.name for d in (root / "Images").iterdir() if d.is_dir())
        if not raw_classes:
            raise DatasetLayoutError(self.name, root, self.expected, ["Images/<wnid>-<breed>/ (no class folders)"])

        mat = _load_mat(list_file, self.name, root)
        absent = [key for key in ("file_list", "labels") if key not in mat]
        if absent:
            raise DatasetIntegrityError(self.name, root, [f"{list_file}: no field(s) {absent} (has {sorted(mat)})"])
        files = [str(np.ravel(entry)[0]) for entry in np.ravel(mat["file_list"])]
        labels = _mat_ints(mat["labels"], f"{list_file.name}: labels", self.name, root)
        problems = []
        if len(files) != len(labels):
            problems.append(f"{list_file.name}: {len(files)} files but {len(labels)} labels")
        samples = []
        for rel, label in zip(files, labels, strict=False):
            if not 1 <= label <= len(raw_classes):
                problems.append(f"{list_file.name}: {rel} has label {label}, expected 1..{len(raw_classes)}")
                continue
            folder = rel.replace("\\", "/").split("/")[0]
            if folder != raw_classes[label - 1]:
                problems.append(
                    f"{list_file.name}: {rel} has label {label} ({raw_classes[label - 1]}) but lies in folder {folder}"
                )
                continue
            samples.append((str(root / "Images" / rel), label - 1))
        classes = [_display_name(c, r"^n\d+-") for c in raw_classes]
        self._set_samples(samples, classes, raw_classes, problems)
