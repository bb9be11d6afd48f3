"""Stanford Cars in torchvision's layout: :class:`StanfordCars`, registered as ``"cars"``.

Owns the layout check in front of ``torchvision.datasets.StanfordCars`` and the wrapping to the common interface.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torchvision.datasets as tvd

from .base import ImageDataset, _require, _require_scipy, _resolve_parent, _torchvision_samples
from .registry import register_dataset

__all__ = ["StanfordCars"]


@register_dataset("cars")
class StanfordCars(ImageDataset):
    """Stanford Cars through ``torchvision.datasets.StanfordCars``, in torchvision's layout.

    ``root`` is the folder holding ``stanford_cars/`` (``stanford_cars`` itself is accepted too):
    ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ``cars_train/``,
    ``cars_test_annos_withlabels.mat`` and ``cars_test/``.

    Args:
        root: torchvision's root folder.
        split: ``"train"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        download: passed to torchvision (which can no longer download Cars: the original URL is gone).
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).
    """

    name = "cars"
    splits = ("train", "test")
    expected = [
        "stanford_cars/devkit/cars_meta.mat",
        "stanford_cars/devkit/cars_train_annos.mat",
        "stanford_cars/cars_train/<image>.jpg",
        "stanford_cars/cars_test_annos_withlabels.mat",
        "stanford_cars/cars_test/<image>.jpg",
    ]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        download: bool = False,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        self.root = root = _resolve_parent(self.root, "stanford_cars")
        if not download:
            annotations = "devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
            required = ["devkit/cars_meta.mat", annotations, f"cars_{split}/"]
            _require(self.name, root, self.expected, [f"stanford_cars/{r}" for r in required])
        _require_scipy(self.name)  # torchvision reads the .mat annotations with it
        tv, samples = _torchvision_samples(tvd.StanfordCars, root=str(root), split=split, download=download)
        self._set_samples(samples, [str(c) for c in tv.classes])
