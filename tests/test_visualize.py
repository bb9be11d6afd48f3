"""racnn.pictures.visualize: exact layout and box pixels of draw_attention, upscaling, wrapped captions, title, legend,
right/wrong marks, stacked rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from picture_helpers import colours, edge_pixels
from racnn.pictures.visualize import (
    FONT_SIZE,
    GAP,
    LINE_HEIGHT,
    LINE_WIDTH,
    MIN_PANEL,
    RIGHT_COLOR,
    ROW_GAP,
    SCALE_COLORS,
    WRONG_COLOR,
    Caption,
    _font,
    attention_layout,
    draw_attention,
    head_caption,
    stack_rows,
    tensor_to_pil,
    wrap_text,
)

GREY = (128, 128, 128)


def test_draw_attention_layout_and_box_pixels():
    image = Image.new("RGB", (90, 60), GREY)
    boxes = [(10.2, 5.0, 70.4, 55.6), (30.0, 20.0, 50.0, 40.0)]
    crops = [Image.new("RGB", (48, 48), (10, 20, 30)), Image.new("RGB", (48, 48), (200, 100, 50))]
    captions = ["scale 1: a 0.50", "scale 2: c 0.90", "scale 3: d 0.99"]
    picture = draw_attention(image, boxes, crops, captions, legend=False, min_panel=0)  # drawn at its own size

    layout = attention_layout(image.size, captions, min_panel=0)
    top = layout.top
    assert layout.header_height == 0 and layout.panel == (90, 60) and layout.zoom == (1.0, 1.0)
    assert picture.size == layout.size == (90 + 2 * (GAP + 60), top + 60)
    assert layout.lefts == (0, 90 + GAP, 90 + GAP + 60 + GAP)
    px = picture.load()
    for box, color in zip(boxes, SCALE_COLORS, strict=False):
        x1, y1, x2, y2 = (round(v) for v in box)
        for x, y in edge_pixels(box, image.size):
            assert px[x, top + y] == color
        # the line is LINE_WIDTH px wide, centred on the edge: one pixel beyond it is the image again
        mid_y = (y1 + y2) // 2
        assert px[x1 - LINE_WIDTH // 2 - 1, top + mid_y] == GREY
        assert px[x1 + LINE_WIDTH // 2, top + mid_y] == color
        assert px[x1 + LINE_WIDTH // 2 + 1, top + mid_y] == GREY
    assert px[45, top + 30] == GREY  # inside the inner box: untouched
    # crop panels: H x H, their left edges after the input panel and a gap, framed in the scale's colour
    for i, (crop, color) in enumerate(zip(crops, SCALE_COLORS, strict=False)):
        left = layout.lefts[i + 1]
        assert px[left, top + 30] == color and px[left + 59, top + 30] == color
        assert px[left + 30, top + 30] == crop.getpixel((0, 0))
        assert px[left - 1, top + 30] == (255, 255, 255)  # the gap
    assert image.getpixel((10, 30)) == GREY  # the caller's image is not drawn on


def test_small_inputs_are_upscaled_with_their_boxes():
    image = Image.new("RGB", (64, 48), GREY)  # shorter side 48 < MIN_PANEL
    box = (8.0, 8.0, 40.0, 40.0)
    picture = draw_attention(image, [box], [Image.new("RGB", (16, 16))], ["a", "b"], legend=False)
    layout = attention_layout(image.size, ["a", "b"])
    assert layout.panel == (round(64 * MIN_PANEL / 48), MIN_PANEL) and picture.size == layout.size
    zx, zy = layout.zoom
    drawn = (box[0] * zx, box[1] * zy, box[2] * zx, box[3] * zy)
    px = picture.load()
    assert all(px[x, layout.top + y] == SCALE_COLORS[0] for x, y in edge_pixels(drawn, layout.panel))
    # a large image is drawn at its own size
    assert attention_layout((300, 250), ["a"]).panel == (300, 250)


def test_captions_wrap_and_are_never_cut():
    font = _font(FONT_SIZE)
    text = "scale 2: red-cyan diagonal-down 0.91\nsecond line averyveryverylongwordthatcannotfitanywhere"
    lines = wrap_text(text, font, 100)
    assert all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace("\n", "").replace(" ", "")  # nothing dropped
    assert lines[0] == "scale 2: red-cyan" and "second line" in lines  # wrapped between words, "\n" kept

    long = ["scale 1: " + "blue-yellow diagonal-down " * 3, "scale 2: x 0.5"]
    short = ["scale 1: a", "scale 2: x 0.5"]
    image = Image.new("RGB", (MIN_PANEL, MIN_PANEL), GREY)
    crops = [Image.new("RGB", (8, 8))]
    tall, low = (draw_attention(image, [(1, 1, 9, 9)], crops, c, legend=False) for c in (long, short))
    assert tall.width == low.width  # the strip grows downwards, the panels keep their width
    assert attention_layout(image.size, long).top > attention_layout(image.size, short).top
    # every line of the caption is drawn: ink in each line's band of the caption strip
    lines = wrap_text(long[0], font, MIN_PANEL - 8)
    strip = np.asarray(tall.convert("L"))[:, :MIN_PANEL]
    for row in range(len(lines)):
        band = strip[4 + row * LINE_HEIGHT : 4 + (row + 1) * LINE_HEIGHT]
        assert (band < 128).any(), f"caption line {row} not drawn"


def test_title_legend_and_marks():
    image = Image.new("RGB", (MIN_PANEL, MIN_PANEL), GREY)
    crops = [Image.new("RGB", (8, 8))] * 2
    boxes = [(10, 10, 200, 200), (50, 50, 150, 150)]
    captions = [Caption("scale 1: a 0.5", correct=True), Caption("scale 2: b 0.4", correct=False), "scale 3: a"]
    plain = draw_attention(image, boxes, crops, ["1", "2", "3"], legend=False)
    picture = draw_attention(image, boxes, crops, captions, title="bird.jpg")
    layout = attention_layout(image.size, captions, title="bird.jpg", legend=SCALE_COLORS[:2])
    assert layout.header_height > 0 and picture.size == layout.size and picture.height > plain.height
    header = colours(picture.crop((0, 0, picture.width, layout.header_height)))
    assert set(SCALE_COLORS[:2]) <= header and SCALE_COLORS[2] not in header  # a swatch per box, no more
    strip = picture.crop((0, layout.header_height, picture.width, layout.top))
    first, second, third = (strip.crop((left, 0, left + MIN_PANEL, strip.height)) for left in layout.lefts)
    assert RIGHT_COLOR in colours(first) and WRONG_COLOR not in colours(first)
    assert WRONG_COLOR in colours(second) and RIGHT_COLOR not in colours(second)
    assert not {RIGHT_COLOR, WRONG_COLOR} & colours(third)  # no mark without a verdict


def test_head_caption():
    assert head_caption("scale 2", "a", 0.5) == Caption("scale 2: a 0.50")
    assert head_caption("scale 2", "a", 0.5, true="a").correct is True
    assert head_caption("scale 2", "a", 0.5, true="b").correct is False
    assert head_caption("scale 2", None) == Caption("scale 2: not trained yet")


def test_boxes_at_the_border_are_clipped_to_the_input_panel():
    image = Image.new("RGB", (40, 40), GREY)
    picture = draw_attention(image, [(0.0, 0.0, 40.0, 40.0)], [Image.new("RGB", (8, 8))], ["a", "b"], min_panel=0)
    top = attention_layout(image.size, ["a", "b"], legend=SCALE_COLORS[:1], min_panel=0).top
    px = picture.load()
    assert px[0, top + 20] == SCALE_COLORS[0] and px[39, top + 20] == SCALE_COLORS[0]
    assert px[40, top + 20] == (255, 255, 255)  # not drawn into the gap


def test_draw_attention_checks_its_arguments():
    image = Image.new("RGB", (20, 20))
    with pytest.raises(ValueError, match="captions"):
        draw_attention(image, [(1, 1, 5, 5)], [image], ["only one"])
    with pytest.raises(ValueError, match="one crop per box"):
        draw_attention(image, [(1, 1, 5, 5)], [image, image], ["a", "b", "c"])


def test_tensor_to_pil_undoes_the_normalisation():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    rgb = torch.rand(3, 7, 9)
    normalised = (rgb - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    picture = tensor_to_pil(normalised, mean, std)
    assert picture.size == (9, 7) and picture.mode == "RGB"
    np.testing.assert_allclose(np.asarray(picture) / 255.0, rgb.permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)


def test_stack_rows_pastes_each_row_under_the_header():
    rows = [Image.new("RGB", (30, 10), GREY), Image.new("RGB", (50, 20), (1, 2, 3))]
    bare = stack_rows(rows, None)
    assert bare.size == (50, 10 + ROW_GAP + 20)  # no title, no legend: no header
    assert np.array_equal(np.asarray(bare.crop((0, 10 + ROW_GAP, 50, bare.height))), np.asarray(rows[1]))
    titled = stack_rows(rows, "title", legend=SCALE_COLORS[:2])
    header = titled.height - bare.height
    assert header > 0 and SCALE_COLORS[0] in colours(titled.crop((0, 0, titled.width, header)))
    assert np.array_equal(np.asarray(titled.crop((0, header, 30, header + 10))), np.asarray(rows[0]))
    with pytest.raises(ValueError, match="no rows"):
        stack_rows([], "title")
