"""CUB-200-2011 in its official layout: :class:`CUB200`, registered as ``"cub"``.

Owns the reading of CUB's text files (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
``classes.txt``, optional ``bounding_boxes.txt``) and the object boxes.

May import: :mod:`.base` (ImageDataset, layout helpers), :mod:`.registry`, :mod:`.io` and third-party libraries;
nothing outside :mod:`racnn.data`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from .base import ImageDataset, _display_name, _header_size, _read_id_table, _require
from .registry import register_dataset

__all__ = ["CUB200"]


@register_dataset("cub")
class CUB200(ImageDataset):
    """CUB-200-2011 in its official layout.

    ``root`` is the ``CUB_200_2011`` folder (its parent is accepted too) holding ``images/``, ``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt`` (1 = train), ``classes.txt`` and optionally
    ``bounding_boxes.txt``. Labels in the files are 1-based; here they are 0-based.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``"train"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        skip_bad_files: skip unreadable images instead of raising (see :class:`ImageDataset`).
        strict: raise on annotation problems (else record them in ``problems``).

    Attributes:
        classes: display names ("Black footed Albatross"); ``raw_classes`` keeps "001.Black_footed_Albatross".
        image_ids: the CUB image id of every sample.
        boxes: per sample ``(x, y, w, h)`` object box in pixels of the original image, or None without
            ``bounding_boxes.txt``; :meth:`get_box` gives one, :meth:`object_boxes` all of them normalised.
    """

    name = "cub"
    splits = ("train", "test")
    expected = [
        "images/<NNN.Class_name>/<image>.jpg",
        "images.txt                (image_id relative_path)",
        "image_class_labels.txt    (image_id class_id, 1-based)",
        "train_test_split.txt      (image_id is_training_image)",
        "classes.txt               (class_id NNN.Class_name)",
        "bounding_boxes.txt        (image_id x y width height; optional)",
    ]

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        *,
        skip_bad_files: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(root, split, transform, skip_bad_files=skip_bad_files, strict=strict)
        if not (self.root / "images.txt").exists() and (self.root / "CUB_200_2011" / "images.txt").exists():
            self.root = self.root / "CUB_200_2011"
        root = self.root
        _require(
            self.name,
            root,
            self.expected,
            ["images/", "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"],
        )
        problems: list[str] = []
        line: dict[str, dict[int, int]] = {name: {} for name in ("classes", "images", "labels", "split", "boxes")}
        class_table = _read_id_table(root / "classes.txt", 1, problems, line["classes"])
        images = _read_id_table(root / "images.txt", 1, problems, line["images"])
        labels = _read_id_table(root / "image_class_labels.txt", 1, problems, line["labels"])
        is_train = _read_id_table(root / "train_test_split.txt", 1, problems, line["split"])
        box_file = root / "bounding_boxes.txt"
        box_table = _read_id_table(box_file, 4, problems, line["boxes"]) if box_file.is_file() else None

        num_classes = len(class_table)
        if sorted(class_table) != list(range(1, num_classes + 1)):
            problems.append(f"classes.txt: class ids must be 1..{num_classes}, got {sorted(class_table)[:10]}...")
        raw_classes = [class_table[c][0] for c in sorted(class_table)]
        named: dict[str, int] = {}
        for class_id in sorted(class_table):
            first = named.setdefault(class_table[class_id][0], class_id)
            if first != class_id:
                problems.append(
                    f"classes.txt line {line['classes'][class_id]}: class id {class_id} has the name of class id "
                    f"{first} ({class_table[class_id][0]!r})"
                )

        for file_name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            extra = sorted(set(table) - set(images))
            if extra:
                problems.append(f"{file_name}: {len(extra)} id(s) not in images.txt, e.g. {extra[:5]}")

        samples, boxes, image_ids, train_counts = [], {}, {}, Counter()
        box_lines: dict[str, int] = {}
        class_index = {c: i for i, c in enumerate(sorted(class_table))}
        listed: dict[str, int] = {}  # normalised path -> the first image id that lists it
        for image_id in sorted(images):
            rel = images[image_id][0]
            if image_id not in labels or image_id not in is_train:
                missing = "image_class_labels.txt" if image_id not in labels else "train_test_split.txt"
                problems.append(f"image id {image_id} ({rel}) is missing from {missing}")
                continue
            label_text, split_text = labels[image_id][0], is_train[image_id][0]
            if not label_text.isdigit() or int(label_text) not in class_index:
                problems.append(
                    f"image_class_labels.txt line {line['labels'][image_id]}: image id {image_id} ({rel}) has label "
                    f"{label_text}, expected a class id 1..{num_classes}"
                )
                continue
            if split_text not in ("0", "1"):
                problems.append(
                    f"train_test_split.txt line {line['split'][image_id]}: image id {image_id} ({rel}) has value "
                    f"{split_text!r}, expected 0 or 1"
                )
                continue
            first = listed.setdefault(os.path.normpath(rel), image_id)
            if first != image_id:  # one file under two ids: counted twice, or in both splits (a leak into test)
                where = f"images.txt lines {line['images'][first]} and {line['images'][image_id]}"
                if is_train[first][0] != split_text:
                    problems.append(
                        f"{where}: {rel} is listed under image ids {first} and {image_id}, one a training and one a "
                        "test image: the test score would count a training image; the second left out"
                    )
                else:
                    problems.append(
                        f"{where}: {rel} is listed under image ids {first} and {image_id}; the second is left out"
                    )
                continue
            label = class_index[int(label_text)]
            train_counts[label] += split_text == "1"
            box = None
            if box_table is not None:
                if image_id not in box_table:
                    problems.append(f"bounding_boxes.txt: no box for image id {image_id} ({rel})")
                else:
                    box = _box(box_table[image_id])
                    if box is None:
                        values = " ".join(box_table[image_id])
                        problems.append(
                            f"bounding_boxes.txt line {line['boxes'][image_id]}: image id {image_id} ({rel}) has an "
                            f"invalid box {values!r}: expected finite x, y >= 0 and width, height > 0"
                        )
            if (split_text == "1") == (split == "train"):
                path = str(root / "images" / rel)
                samples.append((path, label))
                boxes[path], image_ids[path] = box, image_id
                box_lines[path] = line["boxes"].get(image_id, 0)
        problems += [
            f"class {raw_classes[c]!r} (class id {c + 1}) has no training images"
            for c in range(num_classes)
            if not train_counts[c]
        ]
        classes = [_display_name(c, r"^\d+\.") for c in raw_classes]
        # Classes without training images were checked above on the whole annotation set, for both splits.
        self._set_samples(samples, classes, raw_classes, problems, check_empty_classes=False)
        self.image_ids: list[int] = [image_ids[p] for p in self.paths]
        self.boxes: list[tuple[float, float, float, float]] | None = (
            [boxes[p] for p in self.paths] if box_table is not None else None
        )
        self.box_lines: list[int] = [box_lines[p] for p in self.paths]  # bounding_boxes.txt line of each box
        self._image_sizes: Tensor | None = None

    @property
    def has_boxes(self) -> bool:
        """Whether ``bounding_boxes.txt`` was present."""
        return self.boxes is not None

    def image_sizes(self) -> Tensor:
        """``(N, 2)`` float ``(height, width)`` of every original image, from the file headers (cached; NaN
        for a file that cannot be opened)."""
        if self._image_sizes is None:
            with ThreadPoolExecutor(max_workers=8) as pool:
                self._image_sizes = torch.tensor(list(pool.map(_header_size, self.paths)), dtype=torch.float32)
        return self._image_sizes.view(-1, 2)

    def object_boxes(self) -> Tensor | None:
        """``(N, 4)`` object boxes as normalised ``(x1, y1, x2, y2)`` of each original image (x by its width,
        y by its height; the convention of ``racnn.modeling.crop.boxes_to_xyxy(..., image_size=None)``), or None
        without ``bounding_boxes.txt``. Rows of unreadable images are NaN."""
        if self.boxes is None:
            return None
        xywh = torch.tensor(self.boxes, dtype=torch.float64).view(-1, 4)
        h, w = self.image_sizes().double().unbind(1)
        x1, y1 = xywh[:, 0] / w, xywh[:, 1] / h
        x2, y2 = (xywh[:, 0] + xywh[:, 2]) / w, (xywh[:, 1] + xywh[:, 3]) / h
        return torch.stack([x1, y1, x2, y2], dim=1).float()

    def get_box(self, index: int) -> tuple[float, float, float, float]:
        """The object box ``(x, y, w, h)`` of sample ``index`` in pixels of the original image.

        Raises:
            ValueError: the layout has no ``bounding_boxes.txt``.
        """
        if self.boxes is None:
            raise ValueError(f"no bounding_boxes.txt under {self.root}: this copy of CUB has no object boxes")
        return self.boxes[index]


def _box(values: list[str]) -> tuple[float, float, float, float] | None:
    """``(x, y, w, h)`` from a line of ``bounding_boxes.txt``, or None unless finite with ``x, y >= 0`` and
    ``w, h > 0`` (``nan`` and ``inf`` parse as floats; a NaN box made every later crop and score NaN)."""
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or x < 0 or y < 0 or w <= 0 or h <= 0:
        return None
    return x, y, w, h
