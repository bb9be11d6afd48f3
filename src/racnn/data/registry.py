"""The data set registry: :data:`DATASETS`, :func:`register_dataset`, :func:`dataset_names`, :func:`build_dataset`.

Owns the name -> builder table, the factory that checks a builder's options, and the builder of the built-in
synthetic set (``"synthetic"``). The file-based families (:mod:`.cub`, :mod:`.dogs`, :mod:`.cars`,
:mod:`.aircraft`, :mod:`.flowers`, :mod:`.folder`) register themselves with :func:`register_dataset` when
``racnn/data/__init__.py`` imports them.

May import: :mod:`.synthetic` and third-party libraries. Never a family module (they import this one) nor
anything outside :mod:`racnn.data`.
"""

from __future__ import annotations

import inspect
import math
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .synthetic import SyntheticFineGrained

__all__ = ["DATASETS", "build_dataset", "dataset_names", "register_dataset"]

DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Class or function decorator adding a data set builder to :data:`DATASETS` under ``name``.

    A builder is called as ``builder(root=..., split=..., transform=..., **options)``.
    """

    def decorator(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS:
            raise ValueError(f"data set name {name!r} is already registered")
        DATASETS[name] = builder
        return builder

    return decorator


def dataset_names() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return sorted(DATASETS)


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable[[Any], Any] | None = None,
    **options: Any,
) -> Dataset:
    """Builds a data set by name.

    Args:
        name: one of :func:`dataset_names`: ``"cub"``, ``"dogs"``, ``"cars"``, ``"aircraft"``, ``"flowers"``,
            ``"folder"``, ``"synthetic"``.
        root: the data set's folder (see each class for what it must hold); ignored by ``"synthetic"``.
        split: ``"train"`` or ``"test"``, plus ``"val"`` where the layout has one.
        transform: applied to the RGB PIL image (to the [0, 1] float tensor for ``"synthetic"``).
        **options: data-set-specific keyword options, e.g. ``skip_bad_files=True``,
            ``annotation_level="family"`` (aircraft), ``num_classes=4`` (synthetic).

    Returns:
        The data set.

    Raises:
        ValueError: unknown name, split or option.
        DatasetLayoutError: required files are missing.
        DatasetIntegrityError: the annotations are inconsistent.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    builder = DATASETS[name]
    parameters = inspect.signature(builder).parameters
    valid = [p for p in parameters if p not in ("self", "root", "split", "transform")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for data set {name!r}; valid options: {', '.join(valid)}")
    for key, value in options.items():
        _check_option(name, builder, key, value)
    return builder(root=root, split=split, transform=transform, **options)


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _accepts(tp: Any, value: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``tp`` (None: a type this check does not judge)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        verdicts = [_accepts(arg, value) for arg in typing.get_args(tp)]
        return None if None in verdicts else any(verdicts)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return None


def _check_option(name: str, builder: Callable[..., Dataset], key: str, value: Any) -> None:
    """A ValueError naming the option when its value is not of the builder's annotated type (``image_size=[32]``
    used to fail as a TypeError deep inside the builder)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        tp = typing.get_type_hints(target).get(key)
    except (NameError, TypeError):  # an annotation this Python cannot resolve: the builder checks it itself
        return
    if tp is None or _accepts(tp, value) is not False:
        return
    kinds = [_KINDS.get(arg, "none" if arg is type(None) else getattr(arg, "__name__", str(arg))) for arg in
             (typing.get_args(tp) or (tp,))]  # fmt: skip
    raise ValueError(f"option {key!r} of data set {name!r} must be {' or '.join(kinds)}, got {value!r:.80}")


@register_dataset("synthetic")
def _build_synthetic(
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable[[Any], Any] | None = None,
    *,
    num_samples: int | None = None,
    num_classes: int = 8,
    image_size: int = 96,
    seed: int = 0,
    cache: bool = False,
    detail_period: float = 0.0,
    two_details: bool = False,
) -> SyntheticFineGrained:
    """The built-in synthetic set; ``num_samples`` defaults to 1000 for train and 500 otherwise."""
    if num_samples is None:
        num_samples = 1000 if split == "train" else 500
    return SyntheticFineGrained(
        num_samples,
        num_classes=num_classes,
        image_size=image_size,
        seed=seed,
        split=split,
        transform=transform,
        cache=cache,
        root=None if root is None else str(root),
        detail_period=detail_period,
        two_details=two_details,
    )
