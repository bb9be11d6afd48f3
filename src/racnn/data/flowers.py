"""Oxford Flowers-102 in torchvision's layout: :class:`Flowers102`, registered as ``"flowers"``.

Owns the reading of ``flowers-102/imagelabels.mat`` and ``setid.mat`` (without torchvision's MD5 check) and the
train + val merge.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torchvision.datasets as tvd

from .base import ImageDataset, _load_mat, _mat_ints, _require, _resolve_parent
from .io import DatasetIntegrityError
from .registry import register_dataset

__all__ = ["Flowers102"]


@register_dataset("flowers")
class Flowers102(ImageDataset):
    """Oxford Flowers-102 in torchvision's layout: ``flowers-102/jpg/``, ``imagelabels.mat``, ``setid.mat``.

    The files are read here with the same logic as ``torchvision.datasets.Flowers102`` (whose class names are
    used), without torchvision's MD5 check of the two ``.mat`` files, so re-saved copies load too; this
    class's own checks (ids, label range) still apply. ``download=True`` uses torchvision's download (with
    its MD5 checks).

    Args:
        root: torchvision's root folder (holding ``flowers-102/``; ``flowers-102`` itself is accepted too).
        split: ``"train"``, ``"val"`` or ``"test"``. With ``merge_val=True`` ``"train"`` is the official train
            + val lists (2,040 images) and ``"val"`` is refused.
        transform: applied to the RGB PIL image.
        merge_val: train on train + val.
        download: download the data with torchvision when absent.
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).
    """

    name = "flowers"
    splits = ("train", "val", "test")
    expected = [
        "flowers-102/jpg/image_NNNNN.jpg",
        "flowers-102/imagelabels.mat  (labels, 1-based)",
        "flowers-102/setid.mat        (trnid, valid, tstid)",
    ]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        merge_val: bool = True,
        download: bool = False,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        if split == "val" and merge_val:
            raise ValueError("split 'val' is part of 'train' when merge_val=True; pass merge_val=False to get it")
        self.root = root = _resolve_parent(self.root, "flowers-102")
        if download:
            tvd.Flowers102(str(root), split="train", download=True)
        base = root / "flowers-102"
        _require(
            self.name, root, self.expected, ["flowers-102/jpg/", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"]
        )
        labels_mat = _load_mat(base / "imagelabels.mat", self.name, root)
        set_ids = _load_mat(base / "setid.mat", self.name, root)
        keys = {"train": ["trnid"] + (["valid"] if merge_val else []), "val": ["valid"], "test": ["tstid"]}[split]
        absent = [f"setid.mat: {k}" for k in keys if k not in set_ids]
        absent += [] if "labels" in labels_mat else ["imagelabels.mat: labels"]
        if absent:
            raise DatasetIntegrityError(self.name, root, [f"missing field {a}" for a in absent])
        labels = _mat_ints(labels_mat["labels"], "imagelabels.mat: labels", self.name, root)
        classes = list(tvd.Flowers102.classes)
        problems, samples = [], []
        for image_id in (i for k in keys for i in _mat_ints(set_ids[k], f"setid.mat: {k}", self.name, root)):
            if not 1 <= image_id <= len(labels):
                problems.append(f"setid.mat: image id {image_id} has no label (imagelabels.mat has {len(labels)})")
            elif not 1 <= labels[image_id - 1] <= len(classes):
                problems.append(
                    f"imagelabels.mat: image id {image_id} has label {labels[image_id - 1]}, expected 1..{len(classes)}"
                )
            else:
                samples.append((str(base / "jpg" / f"image_{image_id:05d}.jpg"), labels[image_id - 1] - 1))
        self._set_samples(samples, classes, problems=problems)
