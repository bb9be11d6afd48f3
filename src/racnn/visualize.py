"""Attention pictures: the input with the nested attention box of every zoomed scale, and each scale's crop.

Layout of :func:`draw_attention` (all sizes in pixels, deterministic so tests can check exact pixels)::

    +----------------------+-----+-----------+-----+-----------+
    | caption 0            | gap | caption 1 | gap | caption 2 |   caption strip, caption_height(captions) high
    +----------------------+-----+-----------+-----+-----------+
    | input image, its own |     | scale-2   |     | scale-3   |
    | size, with the boxes |     | crop,     |     | crop,     |   H high
    | (W x H)              |     | H x H     |     | H x H     |
    +----------------------+-----+-----------+-----+-----------+

- the input panel's top-left corner is at ``(0, caption_height(captions))``, drawn at its own size (no scaling);
- crop panel ``i`` (0-based, scale ``i + 2``) is the crop resized to ``H x H``, its left edge at
  ``W + GAP + i * (H + GAP)``, framed in the scale's colour;
- the box of scale ``s`` is a ``LINE_WIDTH`` (3) px outline in ``SCALE_COLORS[s - 2]`` whose lines are centred on
  the pixel rows and columns ``round(x1), round(y1), round(x2), round(y2)``, clipped to the input panel; boxes are
  drawn coarse to fine, so where two boxes touch the finer scale's colour is on top.

Colour legend: scale 2 red ``(255, 0, 0)``, scale 3 green ``(0, 255, 0)``, scale 4 blue ``(0, 0, 255)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from racnn.crop import boxes_to_xyxy
from racnn.heads import answer_head, head_logits

__all__ = [
    "GAP",
    "LINE_WIDTH",
    "SCALE_COLORS",
    "attention_grid",
    "caption_height",
    "draw_attention",
    "eval_forward",
    "tensor_to_pil",
]

SCALE_COLORS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # scales 2, 3, 4
LINE_WIDTH = 3  # box outline width, pixels at the drawn size
GAP = 4  # white space between panels and between the rows of a grid
FONT_SIZE = 11
LINE_HEIGHT = 14  # caption text line height
CAPTION_PAD = 3
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)

Box = tuple[float, float, float, float]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def caption_height(captions: Sequence[str]) -> int:
    """Height of the caption strip above the panels: room for the caption with the most lines."""
    lines = max((len(c.split("\n")) for c in captions), default=1)
    return 2 * CAPTION_PAD + LINE_HEIGHT * max(lines, 1)


def tensor_to_pil(img: Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """Undo the normalisation of one image and turn it into an RGB PIL image.

    Args:
        img: ``(3, H, W)`` normalised image, any device and floating dtype.
        mean: per-channel mean that was subtracted.
        std: per-channel std that was divided by.

    Returns:
        ``W x H`` RGB image (values clamped to [0, 1] before rounding to 8 bits).
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(img.shape)}")
    img = img.detach().float().cpu()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (img * s + m).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def _caption_strip(text: str, width: int, height: int, font) -> Image.Image:
    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(text.split("\n")):
        draw.text((CAPTION_PAD, CAPTION_PAD + row * LINE_HEIGHT), line, fill=TEXT_COLOR, font=font)
    return strip  # text wider than the panel is cut at the panel's edge


def draw_attention(
    image: Image.Image,
    boxes_xyxy: Sequence[Box],
    crops: Sequence[Image.Image],
    captions: Sequence[str],
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Draw the nested attention boxes on ``image`` and put each scale's zoomed crop beside it.

    See the module docstring for the exact layout.

    Args:
        image: the scale-1 input, drawn at its own size.
        boxes_xyxy: one ``(x1, y1, x2, y2)`` box per zoomed scale (scale 2 first), pixels of ``image``.
        crops: the zoomed input of each scale (scale 2 first); empty to draw the boxes only.
        captions: ``1 + len(crops)`` captions: the input panel's, then one per crop (``"\\n"`` for more lines).
        colors: one RGB colour per box; default :data:`SCALE_COLORS`.

    Returns:
        An RGB image of size ``(W + len(crops) * (GAP + H), caption_height(captions) + H)``.
    """
    colors = list(SCALE_COLORS if colors is None else colors)
    if len(boxes_xyxy) > len(colors):
        raise ValueError(f"{len(boxes_xyxy)} boxes but only {len(colors)} colours")
    if crops and len(crops) != len(boxes_xyxy):
        raise ValueError(f"expected one crop per box ({len(boxes_xyxy)}), got {len(crops)}")
    if len(captions) != 1 + len(crops):
        raise ValueError(f"expected {1 + len(crops)} captions (input panel + one per crop), got {len(captions)}")

    image = image.convert("RGB")  # a copy: the caller's image is left alone
    width, height = image.size
    half = LINE_WIDTH // 2
    draw = ImageDraw.Draw(image)
    for box, color in zip(boxes_xyxy, colors, strict=False):  # colours may outnumber boxes
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        # PIL draws the outline inwards from the given corners: widen by half a line so it is centred on them.
        draw.rectangle((x1 - half, y1 - half, x2 + half, y2 + half), outline=tuple(color), width=LINE_WIDTH)

    top = caption_height(captions)
    canvas = Image.new("RGB", (width + len(crops) * (GAP + height), top + height), BACKGROUND)
    font = _font()
    canvas.paste(_caption_strip(captions[0], width, top, font), (0, 0))
    canvas.paste(image, (0, top))
    for i, (crop, color) in enumerate(zip(crops, colors, strict=False)):
        left = width + GAP + i * (height + GAP)
        panel = crop.convert("RGB").resize((height, height), Image.Resampling.BILINEAR)
        ImageDraw.Draw(panel).rectangle((0, 0, height - 1, height - 1), outline=tuple(color), width=LINE_WIDTH)
        canvas.paste(_caption_strip(captions[i + 1], height, top, font), (left, 0))
        canvas.paste(panel, (left, top))
    return canvas


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


@torch.no_grad()
def eval_forward(model: nn.Module, images: Tensor) -> Any:
    """Run ``model`` in eval mode under ``torch.no_grad``, then put every submodule back in the mode it was in.

    Restoring per module (not ``model.train(was_training)``) keeps modules that the training loop froze in
    eval mode, e.g. batch norm during the APN phase, frozen.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(images)
    finally:
        for module, training in modes:
            module.training = training


def attention_grid(
    model: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    targets: Tensor | Sequence[int] | None = None,
    max_images: int = 8,
    panel_size: int | None = None,
) -> Image.Image:
    """One :func:`draw_attention` row per image: where the model looks at every scale, and what it predicts.

    The model runs in eval mode under ``torch.no_grad``; the train/eval mode of every submodule is restored
    afterwards.

    Args:
        model: an RA-CNN (``forward(images)`` returns logits, fused, boxes_in_image and crops per scale).
        images: ``(B, 3, S, S)`` normalised inputs; only the first ``max_images`` are drawn.
        mean: the normalisation mean (to display the images).
        std: the normalisation std.
        class_names: names for the class indices.
        targets: ``(B,)`` true class indices, added to the captions when given.
        max_images: the most rows.
        panel_size: side at which the inputs are drawn; default ``max(S, 160)`` so small inputs stay readable.

    Returns:
        The rows stacked top to bottom with ``GAP`` px between them.
    """
    images = images[:max_images]
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (B, 3, S, S) batch, got shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    out = eval_forward(model, images.to(device))
    num_scales = len(out.logits)
    answer = answer_head("fused", getattr(model, "trained_heads", None), num_scales)  # never an untrained head
    side = images.shape[-1]
    panel_size = panel_size or max(side, 160)
    zoom = panel_size / side

    scale_probs = [logits.float().softmax(-1).cpu() for logits in out.logits]  # S x (B, K)
    answer_probs = head_logits(out)[answer].softmax(-1).cpu()  # (B, K)
    boxes_px = [boxes_to_xyxy(b.float().cpu(), (side, side)) * zoom for b in out.boxes_in_image]  # S-1 x (B, 4)
    if targets is not None:
        targets = [int(t) for t in targets]

    def top1(probs: Tensor, i: int) -> str:
        p, k = probs[i].max(-1)
        return f"{_class_name(class_names, int(k))} {float(p):.2f}"

    rows = []
    for i in range(images.shape[0]):
        picture = tensor_to_pil(images[i], mean, std).resize((panel_size, panel_size), Image.Resampling.BILINEAR)
        label = "fused" if answer == "fused" else "mean of scales"
        first = f"s1: {top1(scale_probs[0], i)}\n{label}: {top1(answer_probs, i)}"
        if targets is not None:
            first += f"\ntrue: {_class_name(class_names, targets[i])}"
        captions = [first] + [f"s{s + 1}: {top1(scale_probs[s], i)}" for s in range(1, num_scales)]
        crops = [tensor_to_pil(out.crops[s][i], mean, std) for s in range(1, num_scales)]
        boxes = [tuple(b[i].tolist()) for b in boxes_px]
        rows.append(draw_attention(picture, boxes, crops, captions))

    grid = Image.new(
        "RGB",
        (max(r.width for r in rows), sum(r.height for r in rows) + GAP * (len(rows) - 1)),
        BACKGROUND,
    )
    y = 0
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height + GAP
    return grid
