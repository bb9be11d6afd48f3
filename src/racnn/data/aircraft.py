"""FGVC-Aircraft (2013b) in its official layout: :class:`FGVCAircraft`, registered as ``"aircraft"``.

Owns the layout check in front of ``torchvision.datasets.FGVCAircraft``, the annotation levels and the
train + val merge.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torchvision.datasets as tvd

from .base import ImageDataset, _require, _resolve_parent, _torchvision_samples
from .io import DatasetIntegrityError
from .registry import register_dataset

__all__ = ["FGVCAircraft"]


@register_dataset("aircraft")
class FGVCAircraft(ImageDataset):
    """FGVC-Aircraft (2013b) through ``torchvision.datasets.FGVCAircraft``, in its official layout.

    ``root`` holds ``fgvc-aircraft-2013b/data/`` (``fgvc-aircraft-2013b`` itself is accepted too) with
    ``images/``, ``variants.txt`` / ``families.txt`` / ``manufacturers.txt`` and
    ``images_<level>_<split>.txt``.

    Args:
        root: torchvision's root folder.
        split: ``"train"``, ``"val"`` or ``"test"``. With ``merge_val=True`` (the usual fine-grained protocol,
            6,667 training images) ``"train"`` is the official ``trainval`` list and ``"val"`` is refused.
        transform: applied to the RGB PIL image.
        annotation_level: ``"variant"`` (100 classes), ``"family"`` (70) or ``"manufacturer"`` (30).
        merge_val: train on train + val.
        download: let torchvision download the archive (about 2.6 GB) when absent.
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).
    """

    name = "aircraft"
    splits = ("train", "val", "test")
    levels = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        annotation_level: str = "variant",
        merge_val: bool = True,
        download: bool = False,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        if annotation_level not in self.levels:
            raise ValueError(f"annotation_level must be one of {list(self.levels)}, got {annotation_level!r}")
        if split == "val" and merge_val:
            raise ValueError("split 'val' is part of 'train' when merge_val=True; pass merge_val=False to get it")
        self.root = root = _resolve_parent(self.root, "fgvc-aircraft-2013b")
        self.annotation_level = annotation_level
        tv_split = "trainval" if split == "train" and merge_val else split
        list_name = f"images_{annotation_level}_{tv_split}.txt"
        if not download:
            data = "fgvc-aircraft-2013b/data/"
            expected = [f"{data}images/<image_id>.jpg", f"{data}{self.levels[annotation_level]}", f"{data}{list_name}"]
            _require(self.name, root, expected, [f"{data}images/", expected[1], expected[2]])
        try:
            tv, samples = _torchvision_samples(
                tvd.FGVCAircraft,
                root=str(root),
                split=tv_split,
                annotation_level=annotation_level,
                download=download,
            )
        except KeyError as error:
            problem = f"{list_name}: label {error} is not listed in {self.levels[annotation_level]}"
            raise DatasetIntegrityError(self.name, root, [problem]) from None
        self._set_samples(samples, list(tv.classes))
