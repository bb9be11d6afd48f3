"""The annotated object box as the attention: the data behind the oracle-zoom control (``model.oracle_zoom``).

:class:`ObjectBoxViews` runs a split's transform on each image together with its object box (torchvision moves the
box through the same resize, crop and flip), and hands the model the box, made square and kept inside the input
(:func:`square_box`), as scale 2's box: what a perfect attention would be worth with the same networks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["MIN_ORACLE_SIDE", "ObjectBoxViews", "square_box"]

MIN_ORACLE_SIDE = 0.05  # a box cut to a sliver by the crop still gets a readable zoom


def square_box(xyxy: Tensor, min_side: float = MIN_ORACLE_SIDE) -> Tensor:
    """The square around normalised ``(x1, y1, x2, y2)`` boxes, moved (not cut) to lie inside the image.

    Its side is the box's longer side (at least ``min_side``, at most the image's) and its centre the
    box's, shifted as little as needed to keep the square inside; so the square holds the whole object whenever
    the image can. The input is clipped to the image first (a crop may cut an object).

    Args:
        xyxy: ``(4,)`` or ``(N, 4)``, in units of the (square) image side.

    Returns:
        ``(3,)`` or ``(N, 3)`` boxes ``(cx, cy, half side)``, as an APN proposes them.
    """
    box = xyxy.clamp(0.0, 1.0)
    x1, y1, x2, y2 = box.unbind(-1)
    side = torch.maximum(x2 - x1, y2 - y1).clamp(min_side, 1.0)
    half = side / 2
    cx = torch.minimum(torch.maximum((x1 + x2) / 2, half), 1 - half)
    cy = torch.minimum(torch.maximum((y1 + y2) / 2, half), 1 - half)
    return torch.stack([cx, cy, half], dim=-1)


class ObjectBoxViews(Dataset):
    """Items ``({"images": input[, "source": source], key: box}, label)`` of a data set with object boxes.

    ``key`` is ``"first_boxes"`` for the oracle-zoom control (the model's first box: ``RACNN.forward`` takes it) or
    ``"object_boxes"`` for the box-supervised APN pre-training (``train.pretrain_target=object``: a target only, the
    model never sees it).

    Args:
        dataset: a split built with :func:`racnn.data.to_tensor` as its transform (items: float images in [0, 1]
            and labels) whose
            ``object_boxes()`` gives ``(N, 4)`` normalised xyxy per item (NaN rows: unknown, the whole image).
        transform: the split's :func:`racnn.data.build_transforms`, called on ``(image, box)``.
        key: the item's key of the box (see above).
        needed_by: the setting named in the error when the data set has no boxes.

    Raises:
        ValueError: the data set has no object boxes.
    """

    def __init__(
        self, dataset: Dataset, transform: Any, key: str = "first_boxes", needed_by: str = "model.oracle_zoom"
    ) -> None:
        if key not in ("first_boxes", "object_boxes"):
            raise ValueError(f"key must be first_boxes or object_boxes, got {key!r}")
        get_boxes = getattr(dataset, "object_boxes", None)
        boxes = get_boxes() if callable(get_boxes) else None
        if boxes is None:
            name = getattr(dataset, "name", type(dataset).__name__)
            raise ValueError(f"{needed_by} needs object boxes, and {name} has none (e.g. CUB's bounding_boxes.txt)")
        self.dataset, self.transform, self.key = dataset, transform, key
        self.boxes = torch.as_tensor(boxes, dtype=torch.float32).view(-1, 4)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        from torchvision import tv_tensors

        image, label = self.dataset[index][:2]
        height, width = image.shape[-2:]
        box = self.boxes[index]
        if torch.isnan(box).any():
            box = torch.tensor([0.0, 0.0, 1.0, 1.0])  # unknown: the whole image
        pixels = box * torch.tensor([width, height, width, height], dtype=torch.float32)
        views, moved = self.transform(image, tv_tensors.BoundingBoxes(pixels[None], format="XYXY",
                                                                      canvas_size=(height, width)))  # fmt: skip
        out_h, out_w = moved.canvas_size
        xyxy = moved[0].as_subclass(Tensor).float() / torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        item = {self.key: square_box(xyxy)}
        if isinstance(views, (tuple, list)):  # data.source_size: (input, source)
            item["images"], item["source"] = views
        else:
            item["images"] = views
        return item, label

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "transform", "boxes", "key"):  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)
