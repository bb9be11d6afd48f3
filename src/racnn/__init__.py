"""racnn: RA-CNN (Recurrent Attention CNN, CVPR 2017) for fine-grained recognition.

Example:
    >>> import racnn
    >>> predictor = racnn.load("runs/demo/best.pt")  # doctest: +SKIP
    >>> prediction = predictor.predict("bird.jpg")[0]  # doctest: +SKIP
    >>> prediction.top, prediction.boxes  # the fused answer; attention boxes in pixels  # doctest: +SKIP
"""

from racnn.api import Prediction, Predictor, load
from racnn.backbones import build_backbone, list_backbones
from racnn.config import Config, load_config
from racnn.crop import AttentionCrop, attention_crop, boxes_to_xyxy, compose_boxes, xyxy_to_boxes
from racnn.losses import apn_pretrain_loss, apn_targets, classification_losses, ranking_losses
from racnn.model import RACNN, RACNNOutput

__version__ = "0.1.0"

__all__ = [
    "RACNN",
    "AttentionCrop",
    "Config",
    "Prediction",
    "Predictor",
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
    "xyxy_to_boxes",
]
