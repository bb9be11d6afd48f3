"""Attention pictures: the input with the nested attention box of every zoomed scale, and each scale's crop.

Layout of :func:`draw_attention` (pixels; :func:`attention_layout` computes every position, and the drawing uses it)::

    +----------------------------------------------------------+
    | title, wrapped to the picture's width                    |   header (absent without title and legend)
    | [#] scale 2 box   [#] scale 3 box                        |   legend: one outlined swatch per box colour
    +----------------------+-----+-----------+-----+-----------+
    | caption 0, wrapped   | gap | caption 1 | gap | caption 2 |   caption strip: as many lines as the longest
    +----------------------+-----+-----------+-----+-----------+
    | input image W x H,   |     | scale-2   |     | scale-3   |
    | with the boxes       |     | crop,     |     | crop,     |   H high
    |                      |     | H x H     |     | H x H     |
    +----------------------+-----+-----------+-----+-----------+

- the input is upscaled (bicubic) when its shorter side is below ``min_panel`` (224 px by default), so a 64 px
  input gives a readable picture; the boxes are scaled alike;
- crop panel ``i`` (scale ``i + 2``) is the crop resized to ``H x H``, framed in the scale's colour;
- the box of scale ``s`` is a ``LINE_WIDTH`` (3) px outline in ``SCALE_COLORS[s - 2]`` centred on the pixel rows and
  columns ``round(x1), round(y1), round(x2), round(y2)`` of the drawn panel, clipped to it; boxes are drawn coarse
  to fine, so where two boxes touch the finer scale's colour is on top;
- a :class:`Caption` with ``correct`` set (the true class is known) gets a green check or a red cross and is
  written in that colour; plain strings and ``correct=None`` get no mark (``racnn predict`` has no label).

Colour legend: scale 2 red ``(255, 0, 0)``, scale 3 green ``(0, 255, 0)``, scale 4 blue ``(0, 0, 255)``; with several
regions per scale, one colour per region instead (:mod:`racnn.pictures.region_pictures`).

This module only draws: :mod:`racnn.pictures.model_pictures` runs a model on a batch and draws its rows here, and
:mod:`racnn.pictures.region_pictures` lays out several regions per scale.

May import: torch and PIL; nothing of racnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "GAP",
    "LINE_WIDTH",
    "MIN_PANEL",
    "SCALE_COLORS",
    "AttentionLayout",
    "Caption",
    "answer_label",
    "attention_layout",
    "draw_attention",
    "head_caption",
    "stack_rows",
    "tensor_to_pil",
    "wrap_text",
]

SCALE_COLORS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # scales 2, 3, 4
LINE_WIDTH = 3  # box outline width, pixels at the drawn size
GAP = 4  # white space between panels
ROW_GAP = 12  # white space between the rows of a grid, a thin rule in its middle
MIN_PANEL = 224  # the input panel's shorter side is upscaled to at least this
MAX_UPSCALED_SIDE = 2048  # ...unless that would make its longer side exceed this (a thin panorama)
FONT_SIZE = 13
LINE_HEIGHT = 17  # caption text line height (the font's ascent + descent is 16)
TITLE_FONT_SIZE = 16
TITLE_LINE_HEIGHT = 21
PAD = 4  # around text blocks
MARK = 14  # side of the check / cross drawn before a marked caption
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
RIGHT_COLOR = (0, 128, 0)
WRONG_COLOR = (200, 0, 0)
RULE_COLOR = (200, 200, 200)

Box = tuple[float, float, float, float]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class Caption:
    """Text over a panel (``"\\n"`` starts a new line; long lines are wrapped) and whether it is right.

    Attributes:
        text: the caption.
        correct: True draws a green check and green text, False a red cross and red text, None neither (the
            true class is unknown, or the caption is no answer).
    """

    text: str
    correct: bool | None = None


@lru_cache(maxsize=4)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font: Font, width: float) -> list[str]:
    """``text`` as lines no wider than ``width`` px in ``font``: at its ``"\\n"``, then between words; a word
    wider than ``width`` is split between characters. Nothing is dropped: the words of the lines are the text's."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                cut = max(k for k in range(1, len(word) + 1) if k == 1 or font.getlength(word[:k]) <= width)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _as_caption(caption: str | Caption) -> Caption:
    return caption if isinstance(caption, Caption) else Caption(str(caption))


def _caption_lines(caption: Caption, width: int, font: Font) -> list[str]:
    indent = MARK + PAD if caption.correct is not None else 0
    return wrap_text(caption.text, font, max(width - 2 * PAD - indent, 1))


def _legend_rows(
    colors: Sequence[tuple[int, int, int]], width: int, labels: Sequence[str] | None = None
) -> list[list[tuple[int, str]]]:
    """The legend's entries ``(colour index, text)`` flowed into rows that fit ``width``; the texts are ``labels``,
    by default "scale s box"."""
    font = _font(FONT_SIZE)
    rows: list[list[tuple[int, str]]] = [[]]
    used = PAD
    for i in range(len(colors)):
        text = labels[i] if labels is not None else f"scale {i + 2} box"
        need = MARK + PAD + int(font.getlength(text)) + 3 * PAD
        if rows[-1] and used + need > width:
            rows.append([])
            used = PAD
        rows[-1].append((i, text))
        used += need
    return rows if rows[0] else []


def _header_height(title: Caption | None, legend: Sequence[tuple[int, int, int]], width: int, labels=None) -> int:
    if title is None and not legend:
        return 0
    lines = len(_caption_lines(title, width, _font(TITLE_FONT_SIZE))) if title is not None else 0
    return 2 * PAD + lines * TITLE_LINE_HEIGHT + len(_legend_rows(legend, width, labels)) * LINE_HEIGHT


def _draw_mark(draw: ImageDraw.ImageDraw, x: int, y: int, correct: bool) -> None:
    """A check (right) or a cross (wrong) in the ``MARK`` square at ``(x, y)``."""
    if correct:
        draw.line([(x + 1, y + 7), (x + 5, y + 12), (x + 13, y + 2)], fill=RIGHT_COLOR, width=3, joint="curve")
    else:
        draw.line([(x + 2, y + 2), (x + 12, y + 12)], fill=WRONG_COLOR, width=3)
        draw.line([(x + 2, y + 12), (x + 12, y + 2)], fill=WRONG_COLOR, width=3)


def _draw_text(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], caption: Caption, width: int, size: int, line_height: int
) -> int:
    """Draw ``caption`` wrapped to ``width`` with its top-left at ``xy``; returns the height used."""
    font = _font(size)
    x, y = xy[0] + PAD, xy[1]
    color = TEXT_COLOR
    if caption.correct is not None:
        _draw_mark(draw, x, y + (line_height - MARK) // 2, caption.correct)
        x += MARK + PAD
        color = RIGHT_COLOR if caption.correct else WRONG_COLOR
    lines = _caption_lines(caption, width, font)
    for row, line in enumerate(lines):
        draw.text((x, y + row * line_height), line, fill=color, font=font)
    return len(lines) * line_height


def _draw_header(canvas: Image.Image, title: Caption | None, legend: Sequence, width: int, labels=None) -> None:
    """The title and the legend of box colours, in the top ``_header_height`` px of ``canvas``."""
    draw = ImageDraw.Draw(canvas)
    y = PAD
    if title is not None:
        y += _draw_text(draw, (0, y), title, width, TITLE_FONT_SIZE, TITLE_LINE_HEIGHT)
    font = _font(FONT_SIZE)
    for row in _legend_rows(legend, width, labels):
        x = PAD
        for i, text in row:
            top = y + (LINE_HEIGHT - MARK) // 2
            draw.rectangle((x, top, x + MARK - 1, top + MARK - 1), outline=tuple(legend[i]), width=LINE_WIDTH)
            draw.text((x + MARK + PAD, y), text, fill=TEXT_COLOR, font=font)
            x += MARK + PAD + int(font.getlength(text)) + 3 * PAD
        y += LINE_HEIGHT


@dataclass(frozen=True)
class AttentionLayout:
    """Where :func:`draw_attention` puts everything (pixels of its picture).

    Attributes:
        size: ``(width, height)`` of the picture.
        panel: ``(W, H)`` of the drawn input panel; each crop panel is ``H x H``.
        zoom: ``(x, y)`` factors from the given image's pixels to the drawn panel's (1.0 unless upscaled).
        header_height: the title and legend strip at the top (0 without either).
        top: y of the panels' top edge (below the header and the caption strip).
        lefts: x of each panel's left edge: the input panel (0) first, then the crops.
    """

    size: tuple[int, int]
    panel: tuple[int, int]
    zoom: tuple[float, float]
    header_height: int
    top: int
    lefts: tuple[int, ...]


def _panel_size(width: int, height: int, min_panel: int) -> tuple[int, int]:
    short, long = min(width, height), max(width, height)
    if short >= min_panel:
        return width, height
    factor = min(min_panel / short, max(1.0, MAX_UPSCALED_SIDE / long))
    return max(1, round(width * factor)), max(1, round(height * factor))


def attention_layout(
    image_size: tuple[int, int],
    captions: Sequence[str | Caption],
    *,
    title: str | Caption | None = None,
    legend: Sequence[tuple[int, int, int]] = (),
    min_panel: int = MIN_PANEL,
    legend_labels: Sequence[str] | None = None,
) -> AttentionLayout:
    """The layout of :func:`draw_attention` for an image of ``image_size`` with ``len(captions) - 1`` crops.

    Args:
        image_size: ``(W, H)`` of the input image as given.
        captions: the captions (input panel first); their wrapped lines set the caption strip's height.
        title: the header's title, or None.
        legend: the box colours the legend lists (one per box), or empty for no legend.
        min_panel: the input panel's shorter side is upscaled to at least this (0: drawn at its own size).
        legend_labels: the legend's texts, one per colour; None: "scale s box".
    """
    width, height = _panel_size(*image_size, min_panel)
    widths = [width] + [height] * (len(captions) - 1)
    lefts = [0]
    for w in widths[:-1]:
        lefts.append(lefts[-1] + w + GAP)
    total = lefts[-1] + widths[-1]
    font = _font(FONT_SIZE)
    lines = max(len(_caption_lines(_as_caption(c), w, font)) for c, w in zip(captions, widths, strict=True))
    header = _header_height(_as_caption(title) if title is not None else None, legend, total, legend_labels)
    top = header + 2 * PAD + lines * LINE_HEIGHT
    zoom = (width / image_size[0], height / image_size[1])
    return AttentionLayout((total, top + height), (width, height), zoom, header, top, tuple(lefts))


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


def draw_attention(
    image: Image.Image,
    boxes_xyxy: Sequence[Box],
    crops: Sequence[Image.Image],
    captions: Sequence[str | Caption],
    colors: Sequence[tuple[int, int, int]] | None = None,
    *,
    title: str | Caption | None = None,
    legend: bool = True,
    min_panel: int = MIN_PANEL,
    legend_labels: Sequence[str] | None = None,
    legend_colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Draw the nested attention boxes on ``image`` and put each scale's zoomed crop beside it.

    See the module docstring for the layout, :func:`attention_layout` for the exact positions.

    Args:
        image: the scale-1 input (any size: upscaled when its shorter side is below ``min_panel``).
        boxes_xyxy: one ``(x1, y1, x2, y2)`` box per zoomed scale (scale 2 first), pixels of ``image``.
        crops: the zoomed input of each scale (scale 2 first); empty to draw the boxes only.
        captions: ``1 + len(crops)`` captions: the input panel's, then one per crop.
        colors: one RGB colour per box; default :data:`SCALE_COLORS`.
        title: a headline over the picture (e.g. the file name and the answer), or None.
        legend: list the box colours ("scale 2 box", ...) under the title (when there are boxes).
        min_panel: the input panel's shorter side is upscaled to at least this many px (0: never).
        legend_labels, legend_colors: what the legend lists instead of one "scale s box" per box colour (e.g.
            one entry per region, :func:`racnn.pictures.region_pictures.region_panels`).

    Returns:
        An RGB image of size ``attention_layout(...).size``.
    """
    colors = list(SCALE_COLORS if colors is None else colors)
    if len(boxes_xyxy) > len(colors):
        raise ValueError(f"{len(boxes_xyxy)} boxes but only {len(colors)} colours")
    if crops and len(crops) != len(boxes_xyxy):
        raise ValueError(f"expected one crop per box ({len(boxes_xyxy)}), got {len(crops)}")
    if len(captions) != 1 + len(crops):
        raise ValueError(f"expected {1 + len(crops)} captions (input panel + one per crop), got {len(captions)}")

    shown = (list(legend_colors) if legend_colors is not None else colors[: len(boxes_xyxy)]) if legend else []
    title = _as_caption(title) if title is not None else None
    layout = attention_layout(
        image.size, captions, title=title, legend=shown, min_panel=min_panel, legend_labels=legend_labels
    )
    width, height = layout.panel
    image = image.convert("RGB")  # a copy: the caller's image is left alone
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    zx, zy = layout.zoom
    half = LINE_WIDTH // 2
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), color in zip(boxes_xyxy, colors, strict=False):  # colours may outnumber boxes
        x1, x2 = round(float(x1) * zx), round(float(x2) * zx)
        y1, y2 = round(float(y1) * zy), round(float(y2) * zy)
        # PIL draws the outline inwards from the given corners: widen by half a line so it is centred on them.
        draw.rectangle((x1 - half, y1 - half, x2 + half, y2 + half), outline=tuple(color), width=LINE_WIDTH)

    canvas = Image.new("RGB", layout.size, BACKGROUND)
    _draw_header(canvas, title, shown, layout.size[0], legend_labels)
    text = ImageDraw.Draw(canvas)
    panel_widths = [width] + [height] * len(crops)
    for left, caption, w in zip(layout.lefts, captions, panel_widths, strict=True):
        _draw_text(text, (left, layout.header_height + PAD), _as_caption(caption), w, FONT_SIZE, LINE_HEIGHT)
    canvas.paste(image, (0, layout.top))
    for left, crop, color in zip(layout.lefts[1:], crops, colors, strict=False):
        panel = crop.convert("RGB").resize((height, height), Image.Resampling.BICUBIC)
        ImageDraw.Draw(panel).rectangle((0, 0, height - 1, height - 1), outline=tuple(color), width=LINE_WIDTH)
        canvas.paste(panel, (left, layout.top))
    return canvas


def answer_label(head: str) -> str:
    """How a picture names the head that answers: ``"answer (fused)"`` or ``"answer (mean of scales)"``."""
    return "answer (mean of scales)" if head == "avg" else f"answer ({head})"


def head_caption(label: str, predicted: str | None, prob: float = 0.0, true: str | None = None) -> Caption:
    """``"label: predicted 0.91"``, marked right or wrong when the true class is known.

    Args:
        label: what answers, e.g. ``"scale 2"``.
        predicted: its top-1 class name; None for a head no phase has trained (its answer is left out).
        prob: the top-1 probability.
        true: the true class name, or None (no mark).
    """
    if predicted is None:
        return Caption(f"{label}: not trained yet")
    text = f"{label}: {predicted} {prob:.2f}"
    return Caption(text) if true is None else Caption(text, correct=predicted == true)


def stack_rows(
    rows: Sequence[Image.Image],
    title: str | Caption | None,
    legend: Sequence[tuple[int, int, int]] = (),
    legend_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Pictures one under another, ``ROW_GAP`` px apart with a thin rule between them, under a header.

    Args:
        rows: the pictures (e.g. :func:`draw_attention` rows drawn without legend).
        title: the headline, or None.
        legend: the box colours the header lists (empty: no legend).
        legend_labels: one text per legend colour; default "scale s box".

    Returns:
        An RGB image as wide as the widest row.
    """
    if not rows:
        raise ValueError("no rows to stack")
    title = None if title is None else _as_caption(title)
    width = max(r.width for r in rows)
    header = _header_height(title, legend, width, legend_labels)
    canvas = Image.new("RGB", (width, header + sum(r.height for r in rows) + ROW_GAP * (len(rows) - 1)), BACKGROUND)
    _draw_header(canvas, title, legend, width, legend_labels)
    draw = ImageDraw.Draw(canvas)
    y = header
    for i, row in enumerate(rows):
        if i:
            draw.line([(0, y - ROW_GAP // 2), (width, y - ROW_GAP // 2)], fill=RULE_COLOR, width=1)
        canvas.paste(row, (0, y))
        y += row.height + ROW_GAP
    return canvas
