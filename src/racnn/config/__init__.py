"""Typed configuration: one source of truth for every setting.

- :mod:`~racnn.config.schema`: the dataclasses (``Config`` = model + data + train) and their defaults.
- :mod:`~racnn.config.checks`: :func:`validate`, the cross-field rules and bounds run on every config built.
- :mod:`~racnn.config.loading`: YAML files, the built-in recipes (``recipes/``), ``--set`` overrides, the dict form.
- :mod:`~racnn.config.device`: :func:`resolve_device`, the one place a device is chosen.

Torch-free to import. Imports run one way: schema <- device <- checks <- loading.

Example:
    >>> from racnn.config import load_config
    >>> cfg = load_config("synthetic_tiny", ["train.seed=1"])
    >>> cfg.train.seed
    1
"""

from racnn.config.checks import BOUNDS, PHASE_BOUNDS, check_bounds, validate
from racnn.config.device import check_device, resolve_device
from racnn.config.loading import (
    RECIPES,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    find_config,
    load_config,
    recipe_names,
    save_config,
)
from racnn.config.schema import (
    MAX_LIST,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PhaseConfig,
    TrainConfig,
    per_apn,
)

__all__ = [
    "BOUNDS",
    "MAX_LIST",
    "PHASE_BOUNDS",
    "RECIPES",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PhaseConfig",
    "TrainConfig",
    "apply_overrides",
    "check_bounds",
    "check_device",
    "config_from_dict",
    "config_to_dict",
    "find_config",
    "load_config",
    "per_apn",
    "recipe_names",
    "resolve_device",
    "save_config",
    "validate",
]
