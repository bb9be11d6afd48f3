"""Checks of a whole :class:`racnn.config.Config`: cross-field rules and the bounds of every size, count and rate.

:func:`validate` runs on every config :func:`racnn.config.config_from_dict` builds (from a file, ``--set`` overrides
or a checkpoint), before any model is made. Torch-free, like :mod:`racnn.config`.

May import: the standard library; racnn.config.schema, racnn.config.device and racnn.safety; racnn.modeling.heads
(``head_names``, inside a function: the one import that runs upward, docs/DESIGN.md).
"""

from __future__ import annotations

from typing import Any

from racnn.config.device import check_device
from racnn.config.schema import Config, ConfigError, _shown, per_apn

__all__ = ["BOUNDS", "PHASE_BOUNDS", "check_bounds", "validate"]


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that say what was expected."""
    m, t = cfg.model, cfg.train
    if not 2 <= m.num_scales <= 4:
        raise ConfigError(f"model.num_scales must be 2, 3 or 4, got {m.num_scales}")
    for key, value in (("model.fixed_side", m.fixed_side), ("train.pretrain_side", t.pretrain_side)):
        if isinstance(value, list) and len(value) != m.num_scales - 1:
            apns = f"{m.num_scales - 1} with {m.num_scales} scales"
            raise ConfigError(f"{key} must be one number or one per APN ({apns}), got {value}")
    if not all(0 <= side <= 1 for side in per_apn(m.fixed_side, m.num_scales)):
        raise ConfigError(f"model.fixed_side must be 0 (learnt boxes) or in (0, 1], got {m.fixed_side}")
    if not 0 < m.min_side < 1:
        raise ConfigError(f"model.min_side must be in (0, 1), got {m.min_side}")
    if m.input_size < 16 or m.zoom_size < 16:
        raise ConfigError(f"model.input_size and zoom_size must be at least 16, got {m.input_size}, {m.zoom_size}")
    _one_of("model.region_pool", m.region_pool, ("mean", "max", "concat"))
    if m.oracle_zoom and m.regions != 1:
        raise ConfigError(f"model.oracle_zoom takes one region (the object box), got model.regions={m.regions}")
    _one_of("train.amp", t.amp, ("auto", "none", "bf16", "fp16"))
    if not all(0 < side <= 1 for side in per_apn(t.pretrain_side, m.num_scales)):
        raise ConfigError(f"train.pretrain_side must be in (0, 1], got {t.pretrain_side}")
    if 0 < cfg.data.source_size < m.input_size:
        size = cfg.data.source_size
        raise ConfigError(f"data.source_size must be 0 (off) or at least model.input_size ({m.input_size}), got {size}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if t.eval_interval < -1:
        raise ConfigError(f"train.eval_interval must be -1, 0 or positive, got {t.eval_interval}")
    _one_of("train.rank_coarser", t.rank_coarser, ("trained", "fixed"))
    _one_of("train.pretrain_target", t.pretrain_target, ("channels", "cam", "cam_extent", "object"))
    if t.pretrain_target == "object" and m.oracle_zoom:
        raise ConfigError("train.pretrain_target=object trains the first APN, whose box model.oracle_zoom replaces")
    if t.pretrain_target != "channels" and m.regions != 1:
        raise ConfigError(f"train.pretrain_target={t.pretrain_target} takes one region, got model.regions={m.regions}")
    if t.pretrain_target != "channels" and t.apn_pretrain.epochs > 0 and t.warmup.epochs == 0:
        raise ConfigError(
            f"train.pretrain_target={t.pretrain_target} reads the scales' classifiers, which only the warm-up trains "
            "before the APN pre-training: set train.warmup.epochs to 1 or more"
        )
    _one_of("train.fusion_init", t.fusion_init, ("classifiers", "random"))
    if t.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be at least 1, got {t.grad_accum}")
    for name in ("warmup", "apn_pretrain", "cls", "apn", "fusion"):
        phase = getattr(t, name)
        _one_of(f"train.{name}.optimizer", phase.optimizer, ("sgd", "adamw"))
        _one_of(f"train.{name}.scheduler", phase.scheduler, ("cosine", "constant"))
        if phase.epochs < 0:
            raise ConfigError(f"train.{name}.epochs must be >= 0, got {phase.epochs}")
    check_bounds(cfg)


def _one_of(key: str, value: Any, options: tuple[str, ...]) -> None:
    """Refuse a choice outside ``options``: "KEY must be a, b or c, got 'value'"."""
    if value not in options:
        choices = ", ".join(options[:-1]) + " or " + options[-1]
        raise ConfigError(f"{key} must be {choices}, got '{value}'")


# Inclusive bounds of every size, count and rate. A config also arrives inside checkpoints that someone else made,
# and a checkpoint's config is checked here before any model is built: a value such as apn_hidden=10**12 must be
# refused in words, not found out by an allocation. The bounds are far beyond any real run.
BOUNDS: dict[str, tuple[float, float]] = {
    "model.num_classes": (0, 100_000),
    "model.input_size": (16, 1024),
    "model.zoom_size": (16, 1024),
    "model.apn_pool": (1, 64),
    "model.apn_hidden": (1, 65_536),
    "model.apn_channels": (0, 65_536),
    "model.mask_k": (1e-3, 1e3),
    "model.regions": (1, 8),
    "data.batch_size": (1, 4096),
    "data.eval_batch_size": (1, 4096),
    "data.num_workers": (0, 256),
    "data.resize_ratio": (1.0, 8.0),
    "data.source_size": (0, 4096),
    "data.synthetic_train": (1, 10_000_000),
    "data.synthetic_test": (1, 10_000_000),
    "data.synthetic_classes": (2, 12),
    "data.synthetic_seed": (0, 2**32 - 1),
    "data.split_seed": (0, 2**32 - 1),
    "train.seed": (0, 2**32 - 1),
    "train.grad_accum": (1, 4096),
    "train.label_smoothing": (0.0, 0.999),
    "train.margin": (0.0, 1.0),
    "train.region_overlap": (0.0, 1e3),
    "train.pretrain_threshold": (0.0, 1.0),
    "train.max_steps_per_epoch": (0, 10**9),
    "train.eval_interval": (-1, 10**6),
    "train.rounds": (0, 1000),
}
PHASE_BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (0, 100_000),
    "lr": (0.0, 1e3),
    "momentum": (0.0, 0.999),
    "weight_decay": (0.0, 1e3),
}
MAX_OPTIONS = 64  # data.options: entries, and items of a list value


def _value_of(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _in_bounds(key: str, value: Any, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value!r}")


def check_bounds(cfg: Config) -> None:
    """Every size, count and rate of ``cfg`` in its range; names, device, best metric and options well formed."""
    for key, (low, high) in BOUNDS.items():
        _in_bounds(key, _value_of(cfg, key), low, high)
    for name in ("warmup", "apn_pretrain", "cls", "apn", "fusion"):
        for key, (low, high) in PHASE_BOUNDS.items():
            _in_bounds(f"train.{name}.{key}", getattr(getattr(cfg.train, name), key), low, high)
    if cfg.model.num_classes == 1:
        raise ConfigError("model.num_classes must be 0 (taken from the data set) or at least 2, got 1")
    from racnn.safety import check_plain_name

    problem = check_plain_name(cfg.train.name, "train.name")
    if problem:
        raise ConfigError(problem)
    check_device(cfg.train.device)
    _check_best_metric(cfg.train.best_metric, cfg.model.num_scales)
    _check_options(cfg.data.options, "data.options")
    _check_options(cfg.model.backbone_kwargs, "model.backbone_kwargs")


def _check_best_metric(metric: str, num_scales: int) -> None:
    from racnn.modeling.heads import head_names

    valid = [f"top{k}_{head}" for k in (1, 5) for head in head_names(num_scales)]
    if metric not in valid:
        raise ConfigError(f"train.best_metric must be one of {', '.join(valid)}; got {metric!r}")


def _check_options(options: dict[str, Any], where: str) -> None:
    """``where`` (data.options, model.backbone_kwargs) holds keyword options: short names, scalars or short lists
    of scalars."""
    scalar = (str, int, float, bool, type(None))
    if len(options) > MAX_OPTIONS:
        raise ConfigError(f"{where} has {len(options)} entries; at most {MAX_OPTIONS}")
    for key, value in options.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{where}: {key!r} is not an option name")
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(items) > MAX_OPTIONS or not all(isinstance(v, scalar) for v in items):
            shown = _shown(value)
            raise ConfigError(
                f"{where}.{key} must be a number, a string, true/false or a short list of them, got {shown}"
            )
