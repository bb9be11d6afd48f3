"""Attention pictures of a model's answers on a batch: run the model, then draw one row per image.

:func:`attention_grid` is what training writes after each round (``attention_round{r}.png``): a title, the legend
of box colours, and one :func:`attention_rows` row per image, each the input with its nested boxes, every scale's
crop and every scale's answer, marked right or wrong when the true classes are known. The drawing itself is
:mod:`racnn.pictures.visualize` (one region per scale) and :mod:`racnn.pictures.region_pictures` (several).

May import: torch, PIL; racnn.modeling.heads, racnn.modeling.regions, racnn.pictures.region_pictures and
racnn.pictures.visualize.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from racnn.modeling.heads import answer_head, head_logits, is_trained
from racnn.modeling.regions import region_crops
from racnn.pictures.region_pictures import boxes_per_region, draw_regions, region_legend
from racnn.pictures.visualize import (
    MIN_PANEL,
    SCALE_COLORS,
    AttentionLayout,
    Caption,
    answer_label,
    attention_layout,
    head_caption,
    stack_rows,
    tensor_to_pil,
)

__all__ = ["OBJECT_COLOR", "attention_grid", "attention_rows", "draw_object_box", "eval_forward"]


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


@torch.no_grad()
def eval_forward(model: nn.Module, *inputs: Tensor) -> Any:
    """Run ``model(*inputs)`` in eval mode under ``torch.no_grad``, then put every submodule back in its mode.

    Restoring per module (not ``model.train(was_training)``) keeps modules that the training loop froze in
    eval mode, e.g. batch norm during the APN phase, frozen.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(*inputs)
    finally:
        for module, training in modes:
            module.training = training


def attention_rows(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    targets: Tensor | Sequence[int] | None = None,
    max_images: int = 8,
    panel_size: int | None = None,
    answer: str = "fused",
    object_boxes: Tensor | None = None,
) -> list[tuple[Image.Image, AttentionLayout]]:
    """The rows of :func:`attention_grid` (same arguments), each with its
    :class:`racnn.pictures.visualize.AttentionLayout`.

    A row is a :func:`racnn.pictures.visualize.draw_attention` picture without legend, titled with the image's number,
    its true class and the model's answer; every caption names a scale and its top-1, marked right or wrong when
    ``targets`` are given. Heads no phase has trained (``model.trained_heads``) show no answer. The title's answer is
    head ``answer`` (the one a run is scored on; the mean of the scales stands in while it is untrained).
    ``object_boxes`` (``(B, 4)`` normalised xyxy in the input, NaN rows unknown) are drawn on the input in
    :data:`OBJECT_COLOR`: the annotated box the attention is scored against.
    """
    device = next(model.parameters()).device
    if isinstance(images, dict):  # the oracle-zoom control's items: the input, the source or None, the object box
        views = [images["images"], images.get("source"), images["first_boxes"]]
    else:  # the input, and the source where there is one
        views = [images] if isinstance(images, Tensor) else list(images)
    views = [None if view is None else view[:max_images].to(device) for view in views]
    images = views[0]
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (B, 3, S, S) batch, got shape {tuple(images.shape)}")
    out = eval_forward(model, *views)
    num_scales = len(out.logits)
    trained = getattr(model, "trained_heads", None)
    answer = answer_head(answer, trained, num_scales)  # "avg" while the fusion heads are untrained
    side = images.shape[-1]
    panel_size = panel_size or max(side, MIN_PANEL)
    zoom = panel_size / side

    heads = head_logits(out)
    probs = {h: heads[h].softmax(-1).cpu() for h in [*(f"s{s + 1}" for s in range(num_scales)), answer]}
    boxes_px = [b * zoom for b in boxes_per_region(out.boxes_in_image, (side, side))]  # S-1 x (B, R, 4)
    true = [_class_name(class_names, int(t)) for t in targets] if targets is not None else None

    def caption(label: str, head: str, i: int) -> Caption:
        if not is_trained(head, trained):
            return head_caption(label, None)
        p, k = probs[head][i].max(-1)
        return head_caption(label, _class_name(class_names, int(k)), float(p), true[i] if true else None)

    rows = []
    for i in range(images.shape[0]):
        picture = tensor_to_pil(images[i], mean, std).resize((panel_size, panel_size), Image.Resampling.BICUBIC)
        if object_boxes is not None and i < len(object_boxes):
            draw_object_box(picture, object_boxes[i])
        answered = caption(answer_label(answer), answer, i)
        title = Caption(f"{i + 1}. " + (f"true: {true[i]} · " if true else "") + answered.text, answered.correct)
        captions = [caption(f"scale {s + 1}", f"s{s + 1}", i) for s in range(num_scales)]
        crops = [[tensor_to_pil(c, mean, std) for c in region_crops(out.crops[s])[i]] for s in range(1, num_scales)]
        boxes = [[tuple(box) for box in b[i].tolist()] for b in boxes_px]
        row, captions = draw_regions(picture, boxes, crops, captions, title=title, legend=False, min_panel=0)
        rows.append((row, attention_layout(picture.size, captions, title=title, min_panel=0)))
    return rows


def attention_grid(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    targets: Tensor | Sequence[int] | None = None,
    max_images: int = 8,
    panel_size: int | None = None,
    title: str = "RA-CNN attention",
    answer: str = "fused",
    object_boxes: Tensor | None = None,
) -> Image.Image:
    """One :func:`racnn.pictures.visualize.draw_attention` row per image under a title and the legend of box colours.

    The model runs in eval mode under ``torch.no_grad``; the train/eval mode of every submodule is restored
    afterwards.

    Args:
        model: an RA-CNN (``forward(images)`` returns logits, fused, boxes_in_image and crops per scale).
        images: ``(B, 3, S, S)`` normalised inputs, or a pair ``[inputs, sources]`` (``data.source_size``; the
            zooms come from the sources); only the first ``max_images`` are drawn.
        mean: the normalisation mean (to display the images).
        std: the normalisation std.
        class_names: names for the class indices.
        targets: ``(B,)`` true class indices: each row names the true class and marks every answer right or wrong.
        max_images: the most rows.
        panel_size: side at which the inputs are drawn; default ``max(S, MIN_PANEL)`` so small inputs stay readable.
        title: the picture's headline.
        answer: the head whose top-1 each row's title gives (a head name of
            :func:`racnn.modeling.heads.head_names`; ``fused`` by default).
        object_boxes: ``(B, 4)`` annotated object boxes (normalised xyxy in the input; NaN rows unknown), drawn on
            each input and listed in the legend as "annotated box"; None: none.

    Returns:
        The title and legend, then the rows of :func:`attention_rows` top to bottom
        (:func:`racnn.pictures.visualize.stack_rows`); as wide as the widest row.
    """
    drawn = attention_rows(model, images, mean, std, class_names, targets, max_images, panel_size, answer, object_boxes)
    scale_colors = SCALE_COLORS[: getattr(model, "num_scales", len(SCALE_COLORS) + 1) - 1]
    legend, labels = region_legend(getattr(model, "regions", 1), scale_colors)  # by scale, or one colour per region
    if object_boxes is not None:
        labels = [*(labels or [f"scale {s + 2} box" for s in range(len(legend))]), "annotated box"]
        legend = [*legend, OBJECT_COLOR]
    return stack_rows([row for row, _ in drawn], Caption(title), legend, labels)


OBJECT_COLOR = (255, 0, 255)  # the annotated object box: magenta (no scale or region has it), with a dark rim


def draw_object_box(picture: Image.Image, box: Tensor) -> None:
    """Draw a normalised xyxy object box on ``picture`` in place (nothing for an unknown, NaN, box)."""
    from PIL import ImageDraw

    if torch.isnan(box).any():
        return
    w, h = picture.size
    x1, y1, x2, y2 = (float(v) for v in (box.clamp(0, 1) * torch.tensor([w, h, w, h])).tolist())
    draw = ImageDraw.Draw(picture)
    draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=4)
    draw.rectangle((x1, y1, x2, y2), outline=OBJECT_COLOR, width=2)
