"""What the checkpoint diagnostics share (``box_spread``, ``box_picture``, ``pretrain_targets``, ``apn_capacity``):
their data options, the checkpoint's model with the config it was trained with, a batch's views, and scale 1's photo
read at another size.

A helper module of the scripts in this folder (each imports it as ``diagnosed_split``); not a benchmark itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from racnn.checkpoint import find_model_file, load_model
from racnn.config import apply_overrides
from racnn.training.loop import model_inputs


def add_data_options(parser: argparse.ArgumentParser, split: bool = True) -> None:
    """``--set`` data settings; with ``split``, also ``--split``, ``--images`` and ``--batch-size``."""
    if split:
        splits = ("train", "val", "test")
        parser.add_argument("--split", default="val", choices=splits, help="whose images (default val)")
        parser.add_argument("--images", type=int, default=0, help="at most this many images (0: all)")
        parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="data settings, e.g. data.root=/data/CUB_200_2011")  # fmt: skip


def load_diagnosed(path: str | Path, overrides: list[str]) -> tuple[torch.nn.Module, object, Path]:
    """The model (in eval mode) of a run folder or model file, its config with ``overrides`` (data read in this
    process), and the file it came from."""
    source = find_model_file(path)
    model, cfg, _ = load_model(source)
    return model.eval(), apply_overrides(cfg, ["data.num_workers=0", *overrides]), source


def view_and_source(images) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's scale-1 input and its source view (``None`` without ``data.source_size``), whatever form its items
    take (:func:`racnn.training.loop.model_inputs`: a tensor, an ``[input, source]`` pair, an oracle run's dict)."""
    inputs = model_inputs(images)
    return inputs[0], inputs[1] if len(inputs) > 1 else None


def photo_at(view: torch.Tensor, source: torch.Tensor | None, size: int) -> torch.Tensor:
    """The photo (the source view, or scale 1's input) resized to ``size`` px."""
    photo = source if source is not None else view
    return F.interpolate(photo, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
