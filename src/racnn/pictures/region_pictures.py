"""Attention pictures of a model with several regions per scale (``model.regions = R > 1``).

:func:`racnn.pictures.visualize.draw_attention` draws one box and one crop panel per entry; with R regions every zoomed
scale has R of each. This module lays them out scale-major (scale 2's regions, then scale 3's...) and colours
them by region, not by scale: a region's nested boxes share its colour (the finer one lies inside the coarser),
and the legend reads "region 1", "region 2"... The scale's answer (from its regions' pooled feature) captions its
region-1 panel; the other regions' panels are captioned "scale s, region r". With one region everything is as
before: colours by scale (:data:`racnn.pictures.visualize.SCALE_COLORS`) and the default legend.

:func:`draw_regions` is the one way both the training pictures (:mod:`racnn.pictures.model_pictures`) and
``Predictor.draw`` (:mod:`racnn.inference.api`) draw an image's boxes and crops, with one region or several.

May import: PIL and torch; nothing of racnn but :mod:`racnn.modeling.regions`, :mod:`racnn.modeling.crop` and
:mod:`racnn.pictures.visualize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch import Tensor

from racnn.modeling.crop import boxes_to_xyxy
from racnn.modeling.regions import as_regions
from racnn.pictures.visualize import MIN_PANEL, SCALE_COLORS, Caption, draw_attention

__all__ = ["REGION_COLORS", "RegionPanels", "boxes_per_region", "draw_regions", "region_legend", "region_panels"]

# One colour per region (up to racnn.modeling.regions.MAX_REGIONS): red, sky blue, orange, purple, green, pink, teal,
# brown.
REGION_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 150, 255),
    (255, 160, 0),
    (160, 0, 255),
    (0, 200, 0),
    (255, 0, 200),
    (0, 200, 200),
    (140, 80, 20),
)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RegionPanels:
    """What :func:`racnn.pictures.visualize.draw_attention` takes for one image, region by region.

    Attributes:
        boxes: one box per (scale, region), scale-major.
        crops: the matching crops (empty when none were given).
        captions: one per crop.
        colors: one per box.
        legend: the legend's labels, one per colour it lists, or None for the default ("scale s box").
        legend_colors: the colours the legend lists.
    """

    boxes: list[Box]
    crops: list[Any]
    captions: list[Any]
    colors: list[tuple[int, int, int]]
    legend: list[str] | None
    legend_colors: list[tuple[int, int, int]]


def region_panels(
    boxes: Sequence[Sequence[Box]],
    crops: Sequence[Sequence[Any]] | None,
    scale_captions: Sequence[Any],
    scale_colors: Sequence[tuple[int, int, int]],
) -> RegionPanels:
    """Flatten per-scale, per-region boxes and crops into the panels of one attention picture.

    Args:
        boxes: for each zoomed scale, its R boxes ``(x1, y1, x2, y2)`` (R the same for every scale).
        crops: for each zoomed scale, its R crops (PIL images), or None.
        scale_captions: one caption per zoomed scale (its answer), put on its region-1 panel.
        scale_colors: the colours of the one-region picture, one per zoomed scale.

    Returns:
        :class:`RegionPanels`; with one region, the boxes and crops as they were, coloured by scale.
    """
    regions = len(boxes[0]) if boxes else 1
    if regions == 1:
        colors = list(scale_colors[: len(boxes)])
        flat_crops = [c[0] for c in crops] if crops else []
        return RegionPanels([b[0] for b in boxes], flat_crops, list(scale_captions), colors, None, colors)
    if regions > len(REGION_COLORS):
        raise ValueError(f"{regions} regions but only {len(REGION_COLORS)} region colours")
    flat_boxes = [box for scale in boxes for box in scale]
    colors = [REGION_COLORS[r] for _ in boxes for r in range(regions)]
    flat_crops = [crop for scale in crops for crop in scale] if crops else []
    captions = [
        scale_captions[s] if r == 0 else f"scale {s + 2}, region {r + 1}"
        for s in range(len(boxes))
        for r in range(regions)
    ]
    legend_colors, labels = region_legend(regions, scale_colors)
    return RegionPanels(flat_boxes, flat_crops, captions, colors, labels, legend_colors)


def region_legend(
    regions: int, scale_colors: Sequence[tuple[int, int, int]]
) -> tuple[list[tuple[int, int, int]], list[str] | None]:
    """The legend of a picture: ``(colours, labels)``; by scale (labels None: "scale s box") with one region, else
    one entry per region."""
    if regions == 1:
        return list(scale_colors), None
    return list(REGION_COLORS[:regions]), [f"region {r + 1}" for r in range(regions)]


def boxes_per_region(boxes_in_image: Sequence[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
    """Every zoomed scale's boxes (``(B, 3)`` or ``(B, R, 3)``) as pixel corners ``(B, R, 4)`` of an image of
    ``image_size`` ``(H, W)``."""
    out = []
    for boxes in boxes_in_image:
        regions = as_regions(boxes.float().cpu())  # (B, R, 3)
        out.append(boxes_to_xyxy(regions.reshape(-1, 3), image_size).view(*regions.shape[:2], 4))
    return out


def draw_regions(
    image: Image.Image,
    boxes: Sequence[Sequence[Box]],
    crops: Sequence[Sequence[Any]] | None,
    captions: Sequence[str | Caption],
    *,
    title: str | Caption | None,
    legend: bool = True,
    min_panel: int = MIN_PANEL,
) -> tuple[Image.Image, list[str | Caption]]:
    """:func:`racnn.pictures.visualize.draw_attention` of one image whose zoomed scales have one region or several.

    Args:
        image: the picture the boxes are drawn on.
        boxes: for each zoomed scale, its R boxes ``(x1, y1, x2, y2)`` in pixels of ``image``.
        crops: for each zoomed scale, its R crops (PIL images), or None (boxes only).
        captions: the input panel's caption, then one per zoomed scale (its answer).
        title: the headline, or None.
        legend: list the box colours under the title: by scale with one region, by region with several.
        min_panel: as in :func:`racnn.pictures.visualize.draw_attention`.

    Returns:
        The picture and its panels' captions (input panel first, then one per crop, region-major within a scale),
        e.g. for :func:`racnn.pictures.visualize.attention_layout`.
    """
    panels = region_panels(boxes, crops, captions[1:], SCALE_COLORS)
    captions = [*captions[:1], *panels.captions]
    picture = draw_attention(
        image, panels.boxes, panels.crops, captions, colors=panels.colors, title=title, legend=legend,
        min_panel=min_panel, legend_labels=panels.legend, legend_colors=panels.legend_colors,
    )  # fmt: skip
    return picture, captions
