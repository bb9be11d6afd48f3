"""The schema of a configuration: one source of truth for every setting.

A :class:`Config` is three dataclasses (model, data, train), with their defaults. Reading them from YAML and
``--set`` overrides is :mod:`racnn.config.loading`; the checks that run on every config built,
:mod:`racnn.config.checks`.

May import: the standard library.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_LIST",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PhaseConfig",
    "TrainConfig",
    "per_apn",
]


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    """The network: backbone, scales, sizes and the attention proposal network (APN)."""

    backbone: str = "tiny"  # see racnn.modeling.backbones.list_backbones()
    pretrained: str | None = None  # None, "imagenet" or a path to a local state dict
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm:NAME only: timm.create_model keywords
    num_classes: int = 0  # 0: taken from the data set at train time
    num_scales: int = 3  # 2 to 4; the paper uses 3
    input_size: int = 448  # scale-1 input side (paper: 448)
    zoom_size: int = 224  # side of every zoomed scale's input (paper: 224)
    min_side: float = 1 / 3  # smallest attention box side, as a fraction of its scale's input side
    apn_pool: int = 7  # the APN pools the conv map to apn_pool x apn_pool before its fc layers
    apn_hidden: int = 1024  # APN hidden width (authors' code: 1024)
    apn_channels: int = 0  # 0: the APN reads the conv map's channels; > 0: a 1x1 conv reduces them to this first
    mask_k: float = 10.0  # steepness of the boxcar mask's logistic, per input pixel
    fixed_side: float | list[float] = 0.0  # 0: learnt boxes; > 0: attention off, centred boxes of this side; or per APN
    regions: int = 1  # attention regions per zoomed scale (1: the paper); racnn.modeling.regions
    region_pool: str = "mean"  # a zoomed scale's feature from its regions': mean | max | concat (regions > 1)
    oracle_zoom: bool = False  # the control: scale 2's box is the annotated object box (made square), train and test


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""

    dataset: str = "synthetic"  # cub | dogs | cars | aircraft | flowers | folder | synthetic
    root: str | None = None  # data set folder in its official layout (unused by synthetic)
    options: dict[str, Any] = field(default_factory=dict)  # layout-specific, e.g. {annotation_level: family}
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 2
    resize_ratio: float = 512 / 448  # train/test resize the shorter side to input_size * resize_ratio
    hflip: bool = True
    source_size: int = 0  # 0: off; > 0 (>= input_size): the zooms are sampled from the image at this side
    skip_bad_files: bool = False  # skip unreadable images (counted, one warning) instead of failing
    val_fraction: float = 0.1  # validation images carved from train, per class, where a layout has no val split
    split_seed: int = 0  # seed of that carving (not train.seed: runs of every seed are chosen on the same images)
    synthetic_train: int = 1200  # built-in synthetic set: images per split and classes
    synthetic_test: int = 600
    synthetic_classes: int = 6
    synthetic_seed: int = 0


@dataclass
class PhaseConfig:
    """One kind of training phase: its length and optimiser settings. epochs = 0 switches it off."""

    epochs: int = 0
    lr: float = 1e-3
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # cosine | constant


@dataclass
class TrainConfig:
    """The schedule (warm-up, APN pre-training, rounds of classification / APN, fusion) and run settings.

    The phases run in this order: ``warmup`` (classification of every scale, APNs frozen),
    ``apn_pretrain`` (regress the APNs onto the strongest response, backbones frozen), then ``rounds`` times
    ``cls`` followed by ``apn``, then ``fusion`` (the fusion heads only).
    """

    output_dir: str = "runs"
    name: str = "racnn"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 where the device has fast bf16 kernels, else none) | none | bf16 | fp16 (CUDA)
    channels_last: bool = True  # on CPU and CUDA (racnn.precision.channels_last_helps); ignored elsewhere
    compile: bool = False
    grad_accum: int = 1
    label_smoothing: float = 0.0
    margin: float = 0.05  # ranking-loss margin (paper: 0.05)
    rank_coarser: str = "fixed"  # fixed: p_t(s) a constant target for p_t(s+1) | trained: the literal loss
    pretrain_side: float | list[float] = 0.5  # APN pre-training target side, of its input's (paper: 1/2); or per APN
    pretrain_target: str = "channels"  # channels (the map's mean) | cam | cam_extent | object (the annotated boxes)
    pretrain_threshold: float = 0.5  # cam_extent: the box holds where the CAM is above this fraction of its range
    region_overlap: float = 1.0  # APN phase, model.regions > 1: weight of the mean pairwise IoU of the regions
    max_steps_per_epoch: int = 0  # 0: whole epochs; >0 caps each epoch (quick checks)
    best_metric: str = "top1_fused"  # the val metric best.pt follows: top1_fused | top1_s1 | top1_s2 | top1_avg ...
    eval_interval: int = 1  # validate every N epochs of a phase; 0: at each phase's end only; -1: at the run's end only
    rounds: int = 2
    warmup: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=0, lr=1e-3))
    apn_pretrain: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=1, lr=1e-3, weight_decay=0.0))
    cls: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=2, lr=1e-3))
    apn: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=1, lr=1e-3, weight_decay=0.0))
    fusion: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=1, lr=1e-2))
    fusion_init: str = "classifiers"  # classifiers: fusion heads start as the sum of the scales' classifiers | random
    progress: bool = True  # tqdm bars
    tensorboard: bool = True  # scalars, attention pictures, hyper-parameters, when tensorboard is installed
    visualize: bool = True  # attention grid after each round and curves.png
    keep_phase_checkpoints: bool = False  # also keep last.pt as phase<N>_<kind>.pt at the end of every phase
    keep_checkpoints: bool = False  # also keep best.pt and last.pt at the end (default: model.safetensors only)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


MAX_LIST = 8  # a list-valued setting (one value per APN) holds at most this many


def per_apn(value: float | Sequence[float], num_scales: int) -> list[float]:
    """A setting given once for every APN or once per APN (``model.fixed_side``, ``train.pretrain_side``), as one
    value per APN, the first APN's (on scale 1's map) first."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * (num_scales - 1)


def _shown(value: Any) -> str:
    """``repr`` cut short: a value from a checkpoint can be a list that holds itself a billion times over."""
    return _SHORT_REPR.repr(value)
