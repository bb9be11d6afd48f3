"""Reading a configuration: YAML files and built-in recipes, ``--set key=value`` overrides
(``--set train.cls.lr=0.01``), and the nested-dict form written into every run folder and stored inside every
checkpoint. Unknown keys are rejected with the nearest valid key in the message; every config built is checked
(:func:`racnn.config.checks.validate`).

May import: the standard library, yaml, racnn.config.schema, racnn.config.checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from racnn.config.checks import validate
from racnn.config.schema import MAX_LIST, Config, ConfigError, _shown

__all__ = [
    "RECIPES",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "find_config",
    "load_config",
    "recipe_names",
    "save_config",
]


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


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(key, list(types_), prefix)
    kwargs = {key: _coerce(value, types_[key], prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from a nested dict; missing keys keep their defaults, unknown keys fail."""
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
        shown = item if len(item) <= 100 else item[:97] + "..."  # a 20,000-character value is not echoed whole
        value = _parse_yaml(raw, f"--set {shown}") if raw.strip() else None
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


MAX_DEPTH = 32  # levels of nested mappings and lists; a racnn config has 4 (train.cls.lr, data.options.x[i])
MAX_CONFIG_BYTES = 2**20


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with a one-line error naming ``where`` and the line and column.

    The nesting is measured on the event stream first (the parser keeps its own stack; the composer recurses), so
    10,000 nested lists are refused in one line instead of hitting Python's recursion limit.
    """
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark is not None else "?"
                    raise ConfigError(
                        f"{where}: nested more than {MAX_DEPTH} levels deep (line {line}); a racnn config has 4"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


RECIPES = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    """The recipes shipped inside the package (``racnn train --config NAME``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """``path`` if it is a file, else the built-in recipe of that name (``paper_vgg19_cub``, ``recipes/x.yaml``)."""
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
            size = Path(path).stat().st_size
            if size > MAX_CONFIG_BYTES:  # a config is a few kB; a mistaken --config data.tar is not read whole
                raise ConfigError(f"config file {path} holds {size / 2**20:.1f} MB; a config is at most 1 MB of YAML")
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
