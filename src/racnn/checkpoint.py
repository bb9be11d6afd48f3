"""Checkpoints: atomic saves, ``weights_only`` loads, and a model rebuilt from its stored config.

A checkpoint is a dict of plain Python types and tensors (see docs/DESIGN.md, "Checkpoints"), so it loads
with ``torch.load(..., weights_only=True)``: no pickled code runs when a user opens a file they downloaded.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from racnn.config import Config, ConfigError, config_from_dict

__all__ = ["CheckpointError", "FORMAT", "VERSION", "config_of", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "racnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable racnn checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A run killed mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            # torch's own message suggests weights_only=False: the wrong advice for a file from elsewhere.
            reason = "it is not a checkpoint, or it holds objects other than tensors and plain types"
        else:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason} (refused by weights_only loading)") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a racnn checkpoint (expected a dict with format='{FORMAT}'); "
            "to start from backbone weights use model.pretrained=PATH instead"
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}; this racnn reads up to {VERSION}")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no '{key}' entry")
    return ckpt


def config_of(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """The :class:`Config` stored in a loaded checkpoint."""
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config does not fit this version of racnn: {e}") from e


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, Config, list[str]]:
    """Rebuild the model stored in a checkpoint: ``(RACNN in eval mode, Config, class names)``."""
    from racnn.model import RACNN

    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = config_of(ckpt, path)
    # Weights come from the checkpoint: never fetch or read the backbone's pre-trained file again.
    cfg.model.pretrained = None
    model = RACNN.from_config(cfg.model)
    described = (
        f"{path} does not fit the model its config describes (backbone={cfg.model.backbone}, "
        f"num_scales={cfg.model.num_scales}, num_classes={cfg.model.num_classes})"
    )
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{described}: {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"{described}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    model.trained_heads = ckpt.get("trained_heads")  # absent from checkpoints older than racnn 0.2
    model.to(map_location).eval()
    return model, cfg, list(ckpt.get("class_names") or [str(i) for i in range(cfg.model.num_classes)])
