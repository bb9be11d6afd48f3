"""Validation splits: the official one where a layout has it, else one carved from train, stratified and seeded.

Owns: :func:`has_official_val` (which layouts ship a validation split of their own), :func:`stratified_split`
(which training images go to validation: the same for a given seed on every machine and every process) and
:class:`SplitView` (a subset of a data set that keeps its interface: classes, targets, samples, object boxes,
image sizes).

May import: numpy, torch. Knows no model and no training.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["SplitView", "has_official_val", "stratified_split"]

# Layouts whose official validation split is separate from train when built with merge_val=False.
MERGED_VAL_LAYOUTS = ("aircraft", "flowers")


def has_official_val(name: str, root: str | os.PathLike | None, options: dict[str, Any]) -> bool:
    """Whether ``name`` at ``root`` has a validation split of its own that is not also its train or test split.

    FGVC-Aircraft and Flowers-102 ship one (used with ``merge_val=False``; a user who sets ``merge_val: true``
    trains on it, so it is not there to validate on); an image folder has one when it holds both ``val/`` and
    ``test/`` (with only one of them, that one is the test split). CUB, Dogs, Cars and the synthetic set have none.
    """
    if name in MERGED_VAL_LAYOUTS:
        return not options.get("merge_val", False)
    if name == "folder" and root is not None:
        return (Path(root) / "val").is_dir() and (Path(root) / "test").is_dir()
    return False


def stratified_split(targets: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split indices into ``(train, val)`` with ``fraction`` of every class in val.

    Each class with ``n >= 2`` images gives ``round(fraction * n)`` of them, at least one and at most ``n - 1``,
    chosen by a permutation seeded with ``seed`` (classes in label order, one stream), so every class keeps
    training images and the split depends only on the labels and the seed.

    Args:
        targets: the label of every image.
        fraction: in ``[0, 1)``; 0 gives an empty val.
        seed: the split's seed (``data.split_seed``), independent of the training seed so that runs of several
            seeds are chosen on the same images.

    Returns:
        Two sorted index lists that partition ``range(len(targets))``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(targets):
        by_class[int(label)].append(index)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        count = min(max(round(fraction * len(members)), 1), len(members) - 1) if fraction > 0 else 0
        val += [members[j] for j in rng.permutation(len(members))[:count]]
    chosen = set(val)
    return [i for i in range(len(targets)) if i not in chosen], sorted(val)


# Methods returning one row per image, taken at the view's indices when the underlying data set has them.
INDEX_ALIGNED_METHODS = ("object_boxes", "image_sizes", "detail_boxes")


def _take(values: Any, indices: list[int]) -> Any:
    return None if values is None else values[indices]


class SplitView(Dataset):
    """The images ``indices`` of ``dataset``, seen as a split of its own.

    Index-aligned data (``targets``, ``samples``, ``paths``, ``object_boxes()``, ``image_sizes()``,
    ``detail_boxes()``) is taken at ``indices``; everything else (``classes``, ``name``, ``root``, ``image_size``,
    ``transform``...) is the underlying data set's.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], split: str) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.split = split

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices", "split"):  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if name in INDEX_ALIGNED_METHODS and callable(value):
            return lambda: _take(value(), self.indices)
        return value

    @property
    def targets(self) -> list[int]:
        targets = self.dataset.targets
        return [targets[i] for i in self.indices]

    @property
    def samples(self) -> list[Any]:
        samples = self.dataset.samples
        return [samples[i] for i in self.indices]

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.samples]

    def __repr__(self) -> str:
        return f"SplitView({self.dataset!r}, split={self.split!r}, samples={len(self)})"
