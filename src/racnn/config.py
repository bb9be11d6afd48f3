"""Typed configuration: one source of truth for every setting.

A :class:`Config` is three dataclasses (model, data, train). It is read from YAML, changed with
``--set key=value`` overrides (``--set train.cls.lr=0.01``), written into every run folder and stored inside
every checkpoint. Unknown keys are rejected with the nearest valid key in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PhaseConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "find_config",
    "load_config",
    "per_apn",
    "recipe_names",
    "resolve_device",
    "save_config",
]


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    """The network: backbone, scales, sizes and the attention proposal network (APN)."""

    backbone: str = "tiny"  # see racnn.backbones.list_backbones()
    pretrained: str | None = None  # None, "imagenet" or a path to a local state dict
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm:NAME only: timm.create_model keywords
    num_classes: int = 0  # 0: taken from the data set at train time
    num_scales: int = 3  # 2 to 4; the paper uses 3
    input_size: int = 448  # scale-1 input side (paper: 448)
    zoom_size: int = 224  # side of every zoomed scale's input (paper: 224)
    min_side: float = 1 / 3  # smallest attention box side, as a fraction of its scale's input side
    apn_pool: int = 7  # the APN pools the conv map to apn_pool x apn_pool before its fc layers
    apn_hidden: int = 1024  # APN hidden width (authors' code: 1024)
    mask_k: float = 10.0  # steepness of the boxcar mask's logistic, per input pixel
    fixed_side: float | list[float] = 0.0  # 0: learnt boxes; > 0: attention off, centred boxes of this side; or per APN
    regions: int = 1  # attention regions per zoomed scale (1: the paper); racnn.regions
    region_pool: str = "mean"  # a zoomed scale's feature from its regions': mean | max | concat (regions > 1)


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
    tensorboard: bool = True  # when the tensorboard package is installed
    visualize: bool = True  # attention grid after each round and curves.png
    keep_phase_checkpoints: bool = False  # also keep last.pt as phase<N>_<kind>.pt at the end of every phase


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------------------
# dict <-> dataclass with strict keys and type checks


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{where}{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float and str -> number."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):  # a list's own error, not the number's, when it fails
            args = sorted(args, key=lambda arg: typing.get_origin(arg) is not list)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"'{key}': invalid value {_shown(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST:
            raise ConfigError(f"'{key}' expects a list of at most {MAX_LIST} items, got {_shown(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' expects a mapping, got {_shown(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' expects a mapping of {tp.__name__} fields, got {_shown(value)}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"'{key}' expects true or false, got {_shown(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):  # 'abc', 10**400
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"'{key}' expects a finite number, got {_shown(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise ConfigError(f"'{key}' holds an integer of {value.bit_length()} bits; at most 64 are accepted")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        raise ConfigError(f"'{key}' expects an integer, got {_shown(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' expects a string, got {_shown(value)}")
    return value


MAX_LIST = 8  # a list-valued setting (one value per APN) holds at most this many


def per_apn(value: float | Sequence[float], num_scales: int) -> list[float]:
    """A setting given once for every APN or once per APN (``model.fixed_side``, ``train.pretrain_side``), as one
    value per APN, the first APN's (on scale 1's map) first."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * (num_scales - 1)


def _shown(value: Any) -> str:
    """``repr`` cut short: a value from a checkpoint can be a list that holds itself a billion times over."""
    return _SHORT_REPR.repr(value)


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(key, list(types_), prefix)
    kwargs = {key: _coerce(value, types_[key], prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from a nested dict; missing keys keep their defaults, unknown keys fail."""
    from racnn.config_checks import validate  # it imports this module's types

    cfg = _from_dict(Config, data or {})
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The nested plain-dict form of ``cfg`` (what YAML files and checkpoints hold)."""
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML scalars)."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.cls.lr=0.01)")
        dotted, raw = item.split("=", 1)
        value = _parse_yaml(raw, f"--set {item}") if raw.strip() else None
        keys = dotted.strip().split(".")
        node = data
        for depth, key in enumerate(keys[:-1]):
            if key not in node:
                raise _unknown_key(key, list(node), ".".join(keys[:depth]) + ("." if depth else ""))
            if not isinstance(node[key], dict):
                raise ConfigError(f"'{'.'.join(keys[: depth + 1])}' is a value, not a section")
            node = node[key]
            if key in ("options", "backbone_kwargs"):  # a free-form mapping: the rest of the key is one name
                node[".".join(keys[depth + 1 :])] = value
                break
        else:
            if keys[-1] not in node:
                raise _unknown_key(keys[-1], list(node), ".".join(keys[:-1]) + ("." if len(keys) > 1 else ""))
            node[keys[-1]] = value
    return config_from_dict(data)


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with a one-line error naming ``where`` and the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


RECIPES = Path(__file__).parent / "configs"


def recipe_names() -> list[str]:
    """The recipes shipped inside the package (``racnn train --config NAME``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """``path`` if it is a file, else the built-in recipe of that name (``paper_vgg19_cub``, ``configs/x.yaml``)."""
    path = Path(path)
    if path.is_file():
        return path
    packaged = RECIPES / (path.stem + ".yaml")
    if path.suffix in ("", ".yaml") and packaged.is_file():
        return packaged
    raise ConfigError(f"config file not found: {path} (built-in recipes: {', '.join(recipe_names())})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (a file or a built-in recipe name), then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
        loaded = _parse_yaml(text, str(path))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def resolve_device(name: str = "auto"):
    """The one place a device is chosen: ``auto`` takes CUDA, then MPS, then the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use device=cpu or auto")
    return device
