"""What a run shows and leaves besides its checkpoints: attention pictures, TensorBoard, the finished folder.

Owns: drawing an attention picture of the run's model (captioned with the head the run is scored on) into the
folder and TensorBoard (:func:`attention_picture`), the hyper-parameters and test metrics in TensorBoard
(:func:`tensorboard_hparams`), and finishing the folder (:func:`finish_folder`: the model card, the resume
checkpoints dropped unless ``train.keep_checkpoints``, ``run.json`` marked finished).

May import: numpy, torch, ``racnn.config``, ``racnn.pictures.model_pictures`` and the training modules
``model_card``, ``run_record``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, default_collate

from racnn.config import Config, config_to_dict
from racnn.training.model_card import model_card, write_model_card
from racnn.training.run_record import finish_record

FINAL_PICTURE = "attention_final.png"
CHECKPOINTS = ("last.pt", "best.pt")  # dropped at the end unless train.keep_checkpoints


def attention_picture(
    model: nn.Module,
    shown: Dataset,
    mean: list[float],
    std: list[float],
    class_names: list[str],
    title: str,
    answer: str,
    path: Path,
    writer: Any = None,
    step: int = 0,
    object_boxes: Any = None,
) -> Path | None:
    """Draw the first 8 images of ``shown`` through ``model`` to ``path`` (and to TensorBoard's ``attention``
    images when ``writer`` is given), each row captioned with head ``answer``'s top-1, with the annotated
    ``object_boxes`` (of ``shown``'s images, normalised xyxy in the input) where given; None when the pictures
    module is not available."""
    try:
        from racnn.pictures.model_pictures import attention_grid
    except ImportError as e:
        warnings.warn(f"attention pictures skipped: racnn.pictures.model_pictures is not available ({e})", stacklevel=2)
        return None
    items = [shown[i] for i in range(min(8, len(shown)))]
    images = default_collate([item[0] for item in items])  # a tensor, or [input, source] (data.source_size)
    targets = [int(item[1]) for item in items]
    boxes = None if object_boxes is None else object_boxes[: len(items)]  # the annotated boxes of those images
    grid = attention_grid(
        model, images, mean, std, class_names, targets, title=title, answer=answer, object_boxes=boxes
    )
    grid.save(path)
    if writer is not None:
        import numpy as np

        writer.add_image(f"attention/{path.stem}", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        writer.flush()
    return path


def flat_hparams(cfg: Config) -> dict[str, Any]:
    """The config as TensorBoard hyper-parameters: ``section.key`` (``train.cls.lr``) -> number, bool or text."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:  # None, lists: as text
            flat[prefix] = str(value)

    walk("", config_to_dict(cfg))
    return flat


def tensorboard_hparams(writer: Any, cfg: Config, metrics: dict[str, Any], trained: list[str]) -> None:
    """The run's config against its test top-1 / top-5 of every trained head, in TensorBoard's HPARAMS tab."""
    results = {
        f"test/{key}": float(value)
        for key, value in metrics.items()
        if key.startswith(("top1_", "top5_")) and key.split("_", 1)[1] in trained
    }
    writer.add_hparams(flat_hparams(cfg), results, run_name=".")
    writer.flush()


def finish_folder(
    run_dir: Path,
    cfg: Config,
    record: dict[str, Any],
    metrics: dict[str, Any],
    trained: list[str],
    seconds: float,
) -> None:
    """The end of a run: ``run.json`` marked finished, the model card, and (unless ``train.keep_checkpoints``)
    ``last.pt`` and ``best.pt`` removed: ``model.safetensors`` holds the chosen model for ``racnn.load``, eval,
    predict and export."""
    results = {k[5:]: float(v) for k, v in metrics.items() if k.startswith("top1_") and k[5:] in trained}
    finish_record(run_dir, record, seconds, results)
    pictures = [name for name in (FINAL_PICTURE, "curves.png") if (run_dir / name).is_file()]
    write_model_card(run_dir, model_card(cfg, record, metrics, trained, pictures, run_dir.name))
    if not cfg.train.keep_checkpoints:
        for name in CHECKPOINTS:
            (run_dir / name).unlink(missing_ok=True)
