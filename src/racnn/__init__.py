"""racnn: RA-CNN (Recurrent Attention CNN, CVPR 2017) for fine-grained recognition.

Example:
    >>> import racnn
    >>> predictor = racnn.load("runs/demo")  # doctest: +SKIP
    >>> prediction = predictor.predict("bird.jpg")[0]  # doctest: +SKIP
    >>> prediction.top, prediction.boxes  # the fused answer; attention boxes in pixels  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that ``import racnn`` and ``racnn --help`` do not load
torch; ``from racnn import RACNN`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "Prediction": "racnn.inference.api",
    "Predictor": "racnn.inference.api",
    "load": "racnn.inference.api",
    "save_pretrained": "racnn.inference.hub",
    "build_backbone": "racnn.modeling.backbones",
    "list_backbones": "racnn.modeling.backbones",
    "Config": "racnn.config",
    "load_config": "racnn.config",
    "AttentionCrop": "racnn.modeling.crop",
    "attention_crop": "racnn.modeling.crop",
    "boxes_to_xyxy": "racnn.modeling.crop",
    "compose_boxes": "racnn.modeling.crop",
    "xyxy_to_boxes": "racnn.modeling.crop",
    "apn_pretrain_loss": "racnn.modeling.losses",
    "apn_targets": "racnn.modeling.losses",
    "classification_losses": "racnn.modeling.losses",
    "ranking_losses": "racnn.modeling.losses",
    "RACNN": "racnn.modeling.model",
    "RACNNOutput": "racnn.modeling.model",
}

__all__ = [
    "AttentionCrop",
    "Config",
    "Prediction",
    "Predictor",
    "RACNN",
    "RACNNOutput",
    "apn_pretrain_loss",
    "apn_targets",
    "attention_crop",
    "boxes_to_xyxy",
    "build_backbone",
    "classification_losses",
    "compose_boxes",
    "list_backbones",
    "load",
    "load_config",
    "ranking_losses",
    "save_pretrained",
    "xyxy_to_boxes",
]  # the keys of _EXPORTS

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from racnn.config import Config, load_config
    from racnn.inference.api import Prediction, Predictor, load
    from racnn.inference.hub import save_pretrained
    from racnn.modeling.backbones import build_backbone, list_backbones
    from racnn.modeling.crop import AttentionCrop, attention_crop, boxes_to_xyxy, compose_boxes, xyxy_to_boxes
    from racnn.modeling.losses import apn_pretrain_loss, apn_targets, classification_losses, ranking_losses
    from racnn.modeling.model import RACNN, RACNNOutput


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'racnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
