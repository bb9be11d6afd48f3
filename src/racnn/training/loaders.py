"""The data of a run: seeded training items, samplers and loaders, the splits of a config, object boxes.

Owns: training items whose augmentation is a function of ``(seed, epoch, index)`` (the same with any number of
workers and after a resume), the training and evaluation loaders (sharded under torchrun), the data sets a
config names (:func:`build_split`), the class count and names, and the object boxes of a test set mapped into
the model's input coordinates (:func:`object_boxes_in_input`).

May import: torch, torchvision, ``racnn.config``, ``racnn.distributed`` and ``racnn.data``. Knows no model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from racnn.config import Config, ConfigError
from racnn.data.splits import MERGED_VAL_LAYOUTS, SplitView, has_official_val, stratified_split
from racnn.distributed import (
    DistInfo,
    ShardSampler,
)


class _SeededItems(Dataset):
    """Items keyed by ``(epoch, index)``: the random augmentation of each is seeded by ``(seed, epoch, index)``.

    So a run's data is the same with any number of loader workers, persistent or not, and after a resume.
    The process's global random state is left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed % 2**63)
            state = random.getstate()
            random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


class _EpochSampler(DistributedSampler):
    """``DistributedSampler`` (order = f(seed, epoch); one shard per process) that yields ``(epoch, index)``."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in super().__iter__())


class _WithIndex(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index][:2]
        return image, target, index


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, _EpochSampler]:
    """Shuffled training batches; call ``sampler.set_epoch(e)`` before each epoch (the order is f(seed, e))."""
    info = dist_info or DistInfo()
    sampler = _EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    loader = DataLoader(
        _SeededItems(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        drop_last=len(sampler) > batch_size,  # no tiny last batch in train-mode batch norm
        generator=torch.Generator().manual_seed(seed),  # leaves the global random stream alone
    )
    return loader, sampler


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches ``(images, targets, indices)`` in order; under torchrun process r gets indices r, r+N, ..."""
    info = dist_info or DistInfo()
    return DataLoader(
        _WithIndex(dataset),
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info.rank, info.world_size),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def has_val_split(cfg: Config) -> bool:
    """Whether ``cfg.data`` has a validation split (see :func:`build_split`)."""
    d = cfg.data
    if d.dataset == "synthetic":
        return round(d.val_fraction * d.synthetic_train) > 0
    return d.val_fraction > 0 or has_official_val(d.dataset, d.root, d.options)


def build_split(cfg: Config, split: str, mean, std) -> Dataset:
    """One split of ``cfg.data`` (``train``, ``val`` or ``test``) with the paper's transform for it (random crop +
    flip for train, centre crop otherwise) at ``cfg.model.input_size``. With ``data.source_size > 0`` an item's
    image is a pair ``(input, source)`` (:class:`racnn.data.SourceViews`); batches then hold a list of the two.

    ``val`` is the layout's own validation split where it has one (FGVC-Aircraft and Flowers-102, then read with
    ``merge_val=False``; a folder with both ``val/`` and ``test/``; the synthetic set renders one of
    ``round(val_fraction * synthetic_train)`` images); otherwise ``data.val_fraction`` of every class is carved
    from train with ``data.split_seed`` and ``train`` is what is left. With ``val_fraction: 0`` and no split of
    its own there is no val (asking for it is a :class:`ConfigError`) and ``train`` is the whole training split.

    With ``model.oracle_zoom`` an item's image is a dict (:class:`racnn.data.object_boxes.ObjectBoxViews`) that also
    holds the object box, moved by the same transform and made square: scale 2's box in the oracle control. With
    ``train.pretrain_target=object`` the train split's items hold it too, as the first APN's pre-training target.
    """
    from racnn.data import build_transforms, to_tensor

    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    d = cfg.data
    transform = build_transforms(split, cfg.model.input_size, mean, std, d.resize_ratio, d.hflip, d.source_size)
    if split == "val" and not has_val_split(cfg):
        raise ConfigError(f"{d.dataset} has no validation split of its own and data.val_fraction is 0")
    box_target = split == "train" and cfg.train.pretrain_target == "object"  # the first APN's pre-training target
    if cfg.model.oracle_zoom or box_target:  # the split without a transform, then the transform on image and box
        from racnn.data.object_boxes import ObjectBoxViews

        if cfg.model.oracle_zoom:
            key, needed_by = "first_boxes", "model.oracle_zoom"
        else:
            key, needed_by = "object_boxes", "train.pretrain_target=object"
        try:
            return ObjectBoxViews(_split_of(cfg, split, to_tensor()), transform, key, needed_by)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return _split_of(cfg, split, transform)


def _split_of(cfg: Config, split: str, transform) -> Dataset:
    d = cfg.data
    if split == "test" or d.dataset == "synthetic":
        return _layout_split(cfg, split, transform)
    if has_official_val(d.dataset, d.root, d.options):
        merged = {"merge_val": False} if d.dataset in MERGED_VAL_LAYOUTS else {}
        return _layout_split(cfg, split, transform, **merged)
    whole = _layout_split(cfg, "train", transform)
    if d.val_fraction == 0:
        return whole
    train_indices, val_indices = stratified_split(whole.targets, d.val_fraction, d.split_seed)
    return SplitView(whole, train_indices if split == "train" else val_indices, split)


def _layout_split(cfg: Config, split: str, transform, **extra) -> Dataset:
    """The split as the layout defines it (the synthetic set rendered at the input size, or the source size)."""
    from racnn.data import build_dataset

    d = cfg.data
    options = {**d.options, **extra}
    if d.dataset == "synthetic":
        counts = {"train": d.synthetic_train, "val": round(d.val_fraction * d.synthetic_train)}
        count = counts.get(split, d.synthetic_test)
        options = {"num_classes": d.synthetic_classes, "image_size": d.source_size or cfg.model.input_size,
                   "seed": d.synthetic_seed, "num_samples": count, **options}  # fmt: skip
    elif d.skip_bad_files:
        options["skip_bad_files"] = True
    return build_dataset(d.dataset, d.root, split, transform, **options)


def build_datasets(cfg: Config, mean, std) -> tuple[Dataset, Dataset | None, Dataset]:
    """The train, val (None when there is none) and test sets of ``cfg.data`` (see :func:`build_split`)."""
    val = build_split(cfg, "val", mean, std) if has_val_split(cfg) else None
    return build_split(cfg, "train", mean, std), val, build_split(cfg, "test", mean, std)


def object_boxes_in_input(dataset: Dataset, input_size: int, resize_ratio: float) -> Tensor | None:
    """Object boxes of a test set mapped through the test transform into the model's input coordinates.

    Uses ``dataset.object_boxes()`` (``(N, 4)`` normalised xyxy in each original image, NaN rows unknown) and
    the original image sizes (``dataset.image_sizes()`` as ``(N, 2)`` ``(H, W)``, or a square
    ``dataset.image_size``). The boxes go through the same resize (shorter side to
    ``round(input_size * resize_ratio)``) and centre crop as the images, by torchvision's own box transforms.

    Returns:
        ``(N, 4)`` normalised xyxy in the ``input_size`` square (clipped to it), or None if the data set has no
        object boxes.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    get_boxes = getattr(dataset, "object_boxes", None)
    boxes = get_boxes() if callable(get_boxes) else None
    if boxes is None:
        return None
    boxes = torch.as_tensor(boxes, dtype=torch.float64).view(-1, 4)
    if callable(getattr(dataset, "image_sizes", None)):
        sizes = torch.as_tensor(dataset.image_sizes(), dtype=torch.float64).view(-1, 2)
    elif isinstance(getattr(dataset, "image_size", None), int):
        sizes = torch.tensor([[dataset.image_size] * 2], dtype=torch.float64).expand(len(boxes), 2)
    else:
        return None
    geometry = v2.Compose([v2.Resize(round(input_size * resize_ratio), antialias=True), v2.CenterCrop(input_size)])
    mapped = torch.full_like(boxes, float("nan"))
    for i, (box, (h, w)) in enumerate(zip(boxes, sizes.tolist(), strict=True)):
        if torch.isnan(box).any():
            continue
        pixels = box * box.new_tensor([w, h, w, h])
        out = geometry(tv_tensors.BoundingBoxes(pixels[None], format="XYXY", canvas_size=(int(h), int(w))))
        mapped[i] = out[0].as_subclass(Tensor).double() / input_size
    return mapped.float()


def count_classes(cfg: Config) -> int:
    if cfg.data.dataset == "synthetic":
        return cfg.data.synthetic_classes
    from racnn.data import build_dataset

    dataset = build_dataset(cfg.data.dataset, cfg.data.root, "train", None, **cfg.data.options)
    return len(dataset.classes)


def class_names_of(dataset: Dataset, num_classes: int) -> list[str]:
    names = list(getattr(dataset, "classes", None) or [])
    if names and len(names) != num_classes:
        raise ConfigError(f"model.num_classes is {num_classes} but the data set has {len(names)} classes")
    return names or [str(i) for i in range(num_classes)]
