"""Checkpoints: atomic saves, ``weights_only`` loads, and a model rebuilt from its stored config.

A checkpoint is a dict of plain Python types and tensors (see docs/DESIGN.md, "Checkpoints"), so it loads
with ``torch.load(..., weights_only=True)``: no pickled code runs when a user opens a file they downloaded.
:func:`load_model` also reads a run's ``model.safetensors`` (tensors plus JSON metadata: config, class names,
trained heads) and a run folder (its ``best.pt``, else ``model.safetensors``, else ``last.pt``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from racnn.config import Config, ConfigError, config_from_dict, config_to_dict
from racnn.safety import describe_os_error, share_like_open

__all__ = [
    "save_model_file",
    "CheckpointError",
    "CheckpointWriteError",
    "FORMAT",
    "VERSION",
    "config_of",
    "find_model_file",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "write_failure",
]

FORMAT = "racnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable racnn checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission); the previous file at the path is kept."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A run killed mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointWriteError(write_failure(path, e, _payload_bytes(payload))) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        share_like_open(tmp)  # mkstemp's files are 0600
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # Measured before the temporary file is removed: a full disk is full now, not after the clean-up.
        reason = write_failure(path, e, _payload_bytes(payload))
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointWriteError(reason) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model_file(
    model: torch.nn.Module,
    cfg: Config,
    class_names: list[str],
    path: str | Path,
    trained_heads: list[str] | None = None,
    run_id: str | None = None,
) -> Path:
    """``model.safetensors``: the weights in float32 (whatever precision the model runs in) with racnn's metadata
    (JSON ``config``, ``class_names``, ``trained_heads``; a run's ``run_id``), written whole or not at all. What
    training leaves in a run folder and :func:`racnn.save_pretrained` shares; :func:`load_model` reads it.

    Raises:
        CheckpointWriteError: the file could not be written (the reason in words; an older file stays).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        key: (value.detach().float() if value.is_floating_point() else value.detach()).cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    metadata = {"format": "racnn", "config": json.dumps(config_to_dict(cfg)), "class_names": json.dumps(class_names)}
    if trained_heads is not None:
        metadata["trained_heads"] = json.dumps(list(trained_heads))
    if run_id is not None:
        metadata["run_id"] = run_id
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        share_like_open(tmp)  # safetensors writes 0600
        tmp.replace(path)
    except Exception as e:  # a full disk is a SafetensorError with no errno; say it in words, keep the old file
        tmp.unlink(missing_ok=True)
        needed = sum(v.numel() * v.element_size() for v in tensors.values())
        raise CheckpointWriteError(write_failure(path, e, needed)) from e
    return path


def _payload_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_payload_bytes(v) for v in value)
    return 0


def write_failure(path: Path, error: BaseException, needed: int = 0) -> str:
    """Why writing ``path`` (about ``needed`` bytes) failed, in words. torch reports a full disk as ``[enforce fail
    at inline_container.cc] unexpected pos`` and safetensors as a ``SafetensorError``, so when the error carries
    no errno the free space decides."""
    kept = " (the previous file is kept)" if path.exists() else ""
    if isinstance(error, OSError) and error.errno is not None:
        return describe_os_error(error, target=path) + kept
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < needed + (1 << 20):
        return (
            f"could not write {path}: no space left on device ({free / 2**20:.1f} MiB free, the file needs "
            f"about {needed / 2**20:.1f} MiB){kept}"
        )
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"could not write {path}: {first}{kept}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = _file_kind(path)
    if kind is not None:
        raise CheckpointError(f"cannot read checkpoint {path}: {kind}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            # torch's own message suggests weights_only=False: the wrong advice for a file from elsewhere.
            reason = "it is not a checkpoint, or it holds objects other than tensors and plain types"
        elif "zip archive" in str(e) or "central directory" in str(e):
            reason = "the file is truncated or damaged (an incomplete copy or download?)"
        else:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason} (refused by weights_only loading)") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        hint = "; it holds bare weights: a backbone's go in model.pretrained=PATH for training" if bare else ""
        raise CheckpointError(
            f"{path} is not a racnn checkpoint (expected a dict with format='{FORMAT}', as in a run's best.pt or "
            f"last.pt){hint}"
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}; this racnn reads up to {VERSION}")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no '{key}' entry")
    return ckpt


def _file_kind(path: Path) -> str | None:
    """What a file that ``torch.save`` cannot have written is, from its first bytes; None when it may be one.

    ``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``). Anything else gets
    a sentence instead of the unpickler's message (a text file gave ``IndexError: pop from empty list``).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return describe_os_error(e, "cannot read", target=path)
    if not head:
        return "the file is empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")):
        return None
    if _is_safetensors(head):
        return "it is a safetensors file (racnn predict, eval, export and racnn.load read it); give best.pt or last.pt"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is a text file, not a file written by torch.save"
    return "it is not a file written by torch.save"


def config_of(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """The :class:`Config` stored in a loaded checkpoint."""
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping")
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is refused: {e}") from e


MODEL_FILES = ("best.pt", "model.safetensors", "last.pt")  # what a run folder offers, in the order picked


def find_model_file(path: str | Path) -> Path:
    """The file :func:`load_model` reads for ``path``: the file itself, or in a run folder the first of
    :data:`MODEL_FILES` that is there (best.pt: the model chosen on val, with everything; model.safetensors: the same
    weights; last.pt: the last epoch's)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in MODEL_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} is a folder without {', '.join(MODEL_FILES[:-1])} or {MODEL_FILES[-1]} in it")


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, Config, list[str]]:
    """Rebuild the model stored in a checkpoint: ``(RACNN in eval mode, Config, class names)``.

    ``path`` is a ``best.pt`` / ``last.pt``, a ``model.safetensors`` written by training, or a run folder
    (:func:`find_model_file` picks the file; ``model.source`` names it).
    """
    from racnn.modeling.model import RACNN

    path = find_model_file(path)
    ckpt = _load_safetensors(path) if path.is_file() and _is_safetensors(_head(path)) else None
    if ckpt is None:
        ckpt = load_checkpoint(path, map_location=map_location)
    cfg = config_of(ckpt, path)
    if cfg.model.num_classes < 2:
        raise CheckpointError(
            f"{path}: its config has model.num_classes={cfg.model.num_classes}; a trained model has 2 or more"
        )
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict (names -> tensors)")
    # Weights come from the checkpoint: never fetch or read the backbone's pre-trained file again.
    cfg.model.pretrained = None
    described = (
        f"{path} does not fit the model its config describes (backbone={cfg.model.backbone}, "
        f"num_scales={cfg.model.num_scales}, num_classes={cfg.model.num_classes})"
    )
    _check_shapes(cfg, ckpt["model"], described)
    model = RACNN.from_config(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shape mismatches: torch lists every one, a line each
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line] or [str(e).splitlines()[0]]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise CheckpointError(f"{described}: {lines[0]}{more}") from e
    if missing or unexpected:
        raise CheckpointError(f"{described}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    trained = ckpt.get("trained_heads")  # absent from checkpoints older than racnn 0.2
    if trained is not None and not (isinstance(trained, list) and all(isinstance(h, str) for h in trained)):
        raise CheckpointError(f"{path}: 'trained_heads' must be a list of head names")
    model.trained_heads = trained
    model.source = str(path)
    model.to(map_location).eval()
    return model, cfg, _class_names(ckpt, model.num_classes, path)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as e:
        raise CheckpointError(describe_os_error(e, "cannot read", target=path)) from e


def _is_safetensors(head: bytes) -> bool:
    """A safetensors file opens with its JSON header's length (8 bytes, little-endian), then the header's ``{``."""
    return len(head) > 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> dict[str, Any]:
    """A ``model.safetensors`` written by training, as the entries of a checkpoint: ``config``, ``model``,
    ``class_names`` and ``trained_heads`` (from its JSON metadata). Reading one runs no code."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != "racnn" or "config" not in metadata:
                raise CheckpointError(
                    f"{path} is a safetensors file without racnn's metadata (format, config, class_names): not one "
                    "written by racnn training; a backbone's weights go in model.pretrained=PATH for training"
                )
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path}: {reason} (a damaged or truncated safetensors file?)") from e
    entries: dict[str, Any] = {"model": state}
    for key in ("config", "class_names", "trained_heads"):
        if key in metadata:
            try:
                entries[key] = json.loads(metadata[key])
            except (ValueError, RecursionError) as e:
                raise CheckpointError(f"{path}: its '{key}' metadata is not JSON ({type(e).__name__})") from e
    return entries


def _check_shapes(cfg: Config, state: dict[str, torch.Tensor], described: str) -> None:
    """The model the config describes, built on the meta device (no memory), against the stored weights.

    So a config that asks for more than its weights hold (``apn_hidden`` far above the stored fc) is refused
    before the real model is allocated: a checkpoint can make racnn allocate about what its file holds, no more.
    """
    from racnn.modeling.model import RACNN

    try:
        with torch.device("meta"):
            skeleton = RACNN.from_config(cfg.model).state_dict()
    except (ValueError, KeyError, RuntimeError) as e:  # e.g. a backbone this racnn does not know
        raise CheckpointError(f"{described}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    for key, tensor in skeleton.items():
        stored = state.get(key)
        if stored is not None and stored.shape != tensor.shape:
            raise CheckpointError(
                f"{described}: {key} is stored as {tuple(stored.shape)}, the config makes it {tuple(tensor.shape)}"
            )
    # load_state_dict would cast silently (float32 weights stored as int8 load as zeros and predict uniform odds).
    retyped = [key for key, tensor in skeleton.items() if key in state and state[key].dtype != tensor.dtype]
    if retyped:
        key = retyped[0]
        more = f" ({len(retyped) - 1} more tensors differ)" if len(retyped) > 1 else ""
        raise CheckpointError(
            f"{described}: {key} is stored as {str(state[key].dtype).removeprefix('torch.')}, the model holds "
            f"{str(skeleton[key].dtype).removeprefix('torch.')}{more}; weights are never cast on loading"
        )
    for key, stored in state.items():  # a NaN weight makes every prediction NaN, and eval score 0 % without a word
        if stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            raise CheckpointError(f"{described}: {key} holds NaN or infinite values; the weights are damaged")


def _class_names(ckpt: dict[str, Any], num_classes: int, path: str | Path) -> list[str]:
    """The stored class names, one string per output of the model's heads (indices when none are stored)."""
    names = ckpt.get("class_names")
    if not names:
        return [str(i) for i in range(num_classes)]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: 'class_names' must be a list of strings")
    if len(names) != num_classes:
        raise CheckpointError(
            f"{path} has {len(names)} class names for a model with {num_classes} classes: the checkpoint is damaged"
        )
    return list(names)
