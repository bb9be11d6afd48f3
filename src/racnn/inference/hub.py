"""Sharing a trained model as a folder, and loading one from the Hugging Face Hub.

Owns: :func:`save_pretrained` (``racnn.save_pretrained``: a checkpoint, run folder or predictor -> a folder to share)
and :func:`write_pretrained` (a folder in the Hugging Face habit: ``model.safetensors`` with racnn's metadata,
``config.json`` and a ``README.md`` model card, which :func:`racnn.load` reads back), :func:`model_card` (the card's
text, a small function a richer card can replace) and :func:`hub_folder` (``"hf-hub:owner/name[@revision]"`` -> the
local snapshot folder, through ``huggingface_hub.snapshot_download``, so its cache, ``HF_HUB_OFFLINE`` and token
rules apply as in timm and transformers). Uploading is ``huggingface_hub``'s own ``upload_folder`` (docs/INFERENCE.md).

May import: torch, safetensors, huggingface_hub (when a hub name is loaded), ``racnn.config``,
``racnn.checkpoint``, ``racnn.modeling.heads``, ``racnn.safety``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from racnn.checkpoint import CheckpointError, load_model, save_model_file
from racnn.config import Config, config_to_dict
from racnn.modeling.heads import fusion_name, is_trained

__all__ = [
    "HUB_PREFIX",
    "PRETRAINED_FILES",
    "hub_folder",
    "is_hub_name",
    "model_card",
    "save_pretrained",
    "write_pretrained",
]

HUB_PREFIX = "hf-hub:"  # timm's spelling: timm.create_model("hf-hub:owner/name")
PRETRAINED_FILES = ("model.safetensors", "config.json", "README.md")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_hub_name(name: str | os.PathLike) -> bool:
    """Whether ``name`` is a hub name, ``"hf-hub:owner/name"`` (optionally ``@revision``), not a path."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def hub_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of ``"hf-hub:owner/name[@revision]"``: downloaded into the Hugging Face cache, or found
    there (``HF_HUB_OFFLINE=1``, or no network: the cached snapshot of that revision, ``main`` by default).

    Only the files :func:`racnn.load` reads are fetched (:data:`PRETRAINED_FILES`).

    Raises:
        racnn.checkpoint.CheckpointError: a malformed name, huggingface_hub not installed, or the model neither
            reachable nor cached (the message says which, and how to fix it).
    """
    spec = name.removeprefix(HUB_PREFIX)
    repo_id, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id):
        raise CheckpointError(f"{name}: expected hf-hub:owner/name or hf-hub:owner/name@revision")
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise CheckpointError(
            f"{name}: loading from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub"
        ) from e
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, cache_dir=cache_dir, allow_patterns=list(PRETRAINED_FILES)
        )
    except LocalEntryNotFoundError as e:
        offline = huggingface_hub.constants.HF_HUB_OFFLINE
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise CheckpointError(
            f"{name}: {why} and the model is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE})"
            "; download it once with network access, or pass a local folder"
        ) from e
    except HfHubHTTPError as e:  # not found, private or gated without a token
        raise CheckpointError(f"{name}: the Hugging Face Hub refused it: {str(e).splitlines()[0]}") from e
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{name}: the repository has no model.safetensors; is it a racnn model?")
    return folder


def model_card(
    config: Config,
    class_names: list[str],
    trained_heads: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
) -> str:
    """A minimal ``README.md`` for a shared model, from what its folder knows: the model, the data's classes, the
    input it expects, the test top-1 per head when ``metrics`` (an evaluation's) are given, and how to load it.

    A front matter block (``library_name``, ``pipeline_tag``, ``tags``) lets the Hugging Face Hub list it.
    """
    m, d = config.model, config.data
    side = d.source_size or m.input_size  # the side the crop is taken at
    names = ", ".join(class_names[:10]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 10 else "")
    lines = [
        "---",
        "library_name: racnn",
        "pipeline_tag: image-classification",
        "tags: [image-classification, fine-grained, ra-cnn, safetensors]",
        "---",
        "",
        f"# RA-CNN ({m.backbone}, {m.num_scales} scales) on {d.dataset}",
        "",
        "A Recurrent Attention CNN (Fu et al., CVPR 2017) trained with racnn: each scale's backbone classifies, "
        "an attention network picks the region the next scale zooms into, and a fusion head reads all scales.",
        "",
        f"- backbone `{m.backbone}`, {m.num_scales} scales, {m.regions} region(s) per zoomed scale",
        f"- input {m.input_size} px, zooms {m.zoom_size} px"
        + (f" sampled from a {side} px view of the image" if d.source_size else ""),
        f"- {len(class_names)} classes: {names}",
        f"- preprocessing: shorter side to {round(side * d.resize_ratio)} px (bilinear, antialiased), centre crop "
        f"{side} px, RGB, the backbone's mean/std (an export's sidecar states every step: docs/INFERENCE.md)",
        f"- answer: the `{fusion_name(m.num_scales)}` fusion head"
        + ("" if is_trained("fused", trained_heads) else " (not trained: the mean of the scales answers)"),
    ]
    if metrics:
        heads = [f"s{s}" for s in range(1, m.num_scales + 1)] + ["fused"]
        scores = [f"{h} {100 * metrics[f'top1_{h}']:.2f} %" for h in heads if f"top1_{h}" in metrics]
        if scores:
            lines += ["", f"Test top-1 ({metrics.get('n_images', '?')} images): " + ", ".join(scores)]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import racnn",
        'predictor = racnn.load("hf-hub:OWNER/NAME")  # or the folder holding this card',
        'prediction = predictor.predict("bird.jpg")[0]',
        "print(prediction.top, prediction.boxes)",
        "```",
        "",
        "Files: `model.safetensors` (the weights, with the config and class names in its metadata), `config.json` "
        "(the same config, to read), this card.",
        "",
    ]
    return "\n".join(lines)


def write_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    config: Config,
    class_names: list[str],
    *,
    metrics: dict[str, Any] | None = None,
    card: Callable[..., str] = model_card,
) -> Path:
    """Write ``folder/model.safetensors``, ``config.json`` and ``README.md``: a model to share, which
    :func:`racnn.load` reads back (``racnn.load(folder)``, or ``racnn.load("hf-hub:owner/name")`` once uploaded).
    :func:`racnn.save_pretrained` calls it with a checkpoint's or a predictor's model.

    The weights are stored in float32 whatever precision ``model`` runs in (a :class:`~racnn.inference.api.Predictor`
    casts them for inference), with racnn's metadata (``format``, ``config``, ``class_names``, ``trained_heads``),
    as training writes ``model.safetensors``.

    Args:
        model: a trained RA-CNN (its ``trained_heads`` attribute, when set, is kept).
        folder: created if needed; the three files in it are replaced.
        config: the model's :class:`~racnn.config.Config`.
        class_names: one name per class.
        metrics: an evaluation's metrics, for the card (optional).
        card: ``(config, class_names, trained_heads, metrics) -> str``, the card's text (default :func:`model_card`).

    Returns:
        ``folder``.
    """
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trained = getattr(model, "trained_heads", None)
    stored = config_to_dict(config)
    save_model_file(model, config, list(class_names), folder / "model.safetensors", trained)
    readable = {"library": "racnn", "config": stored, "class_names": list(class_names), "trained_heads": trained}
    (folder / "config.json").write_text(json.dumps(readable, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(card(config, list(class_names), trained, metrics), encoding="utf-8")
    return folder


def save_pretrained(
    source: str | os.PathLike | Any, folder: str | os.PathLike, *, metrics: dict[str, Any] | None = None
) -> Path:
    """Write a folder to share: ``model.safetensors``, ``config.json`` and a ``README.md`` card
    (:func:`write_pretrained`), which ``racnn.load(folder)`` reads back; upload it with
    ``huggingface_hub.upload_folder`` to load it as ``racnn.load("hf-hub:owner/name")`` (docs/INFERENCE.md).

    Args:
        source: a checkpoint, run folder or hub name as :func:`racnn.load` takes, or a
            :class:`~racnn.inference.api.Predictor`. The weights written are the float32 ones of the file (a
            predictor running in bf16 has rounded copies, so its ``source`` file is read again).
        folder: where to write.
        metrics: an evaluation's metrics for the card; default: the run's ``metrics.json`` beside the checkpoint,
            when there is one.
    """
    if hasattr(source, "precision") and hasattr(source, "model"):  # a Predictor (api imports this module)
        if source.precision.amp == "none":
            model, config, class_names = source.model, source.config, source.class_names
        elif source.source is not None:
            model, config, class_names = load_model(source.source)  # the exact float32 weights
        else:
            raise ValueError(
                f"this predictor runs in {source.precision.amp} with weights cast from a model read from no file; "
                "build it with amp='none' to save its float32 weights"
            )
    else:
        source = hub_folder(str(source)) if is_hub_name(source) else source
        model, config, class_names = load_model(source)
    recorded = Path(getattr(model, "source", "") or ".").parent / "metrics.json"
    if metrics is None and getattr(model, "source", None) and recorded.is_file():
        metrics = json.loads(recorded.read_text(encoding="utf-8"))  # the run's test metrics, written by training
    return write_pretrained(model, folder, config, class_names, metrics=metrics)
