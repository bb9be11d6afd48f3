"""racnn.visualize: exact layout and box pixels of draw_attention; attention_grid restores modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from racnn.model import RACNN
from racnn.visualize import (
    GAP,
    LINE_WIDTH,
    SCALE_COLORS,
    attention_grid,
    caption_height,
    draw_attention,
    tensor_to_pil,
)

GREY = (128, 128, 128)


def edge_pixels(box, image_size, inset: int = 3):
    """Pixels on the four outline centre lines of a drawn box, corners (where boxes may cross) left out."""
    width, height = image_size
    x1, y1, x2, y2 = (round(v) for v in box)
    clamp_x = lambda x: min(max(x, 0), width - 1)  # noqa: E731  (a line at the border is drawn half inside)
    clamp_y = lambda y: min(max(y, 0), height - 1)  # noqa: E731
    points = []
    for y in range(y1 + inset, y2 - inset + 1):
        points += [(clamp_x(x1), y), (clamp_x(x2), y)]
    for x in range(x1 + inset, x2 - inset + 1):
        points += [(x, clamp_y(y1)), (x, clamp_y(y2))]
    return points


def test_draw_attention_layout_and_box_pixels():
    image = Image.new("RGB", (90, 60), GREY)
    boxes = [(10.2, 5.0, 70.4, 55.6), (30.0, 20.0, 50.0, 40.0)]
    crops = [Image.new("RGB", (48, 48), (10, 20, 30)), Image.new("RGB", (48, 48), (200, 100, 50))]
    captions = ["s1: a 0.50\nfused: b 0.70", "s2: c 0.90", "s3: d 0.99"]
    picture = draw_attention(image, boxes, crops, captions)

    top = caption_height(captions)
    assert picture.size == (90 + 2 * (GAP + 60), top + 60)
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
        left = 90 + GAP + i * (60 + GAP)
        assert px[left, top + 30] == color and px[left + 59, top + 30] == color
        assert px[left + 30, top + 30] == crop.getpixel((0, 0))
        assert px[left - 1, top + 30] == (255, 255, 255)  # the gap
    assert image.getpixel((10, 30)) == GREY  # the caller's image is not drawn on


def test_boxes_at_the_border_are_clipped_to_the_input_panel():
    image = Image.new("RGB", (40, 40), GREY)
    picture = draw_attention(image, [(0.0, 0.0, 40.0, 40.0)], [Image.new("RGB", (8, 8))], ["a", "b"])
    top = caption_height(["a", "b"])
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


def test_attention_grid_rows_boxes_and_restored_modes():
    torch.manual_seed(0)
    model = RACNN("tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=48, apn_hidden=16)
    model.train()
    model.backbones[1].eval()  # e.g. frozen batch norm during an APN phase: must stay frozen
    modes = {name: m.training for name, m in model.named_modules()}
    mean, std = model.mean, model.std
    images = torch.randn(5, 3, 64, 64)

    grid = attention_grid(model, images, mean, std, ["a", "b", "c"], targets=[0, 1, 2, 0, 1], max_images=3)

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    captions = ["s1\nfused\ntrue", "s2", "s3"]  # three caption lines with targets
    row_height = caption_height(captions) + 160  # panels are drawn at max(64, 160)
    assert grid.size == (160 + 2 * (GAP + 160), 3 * row_height + 2 * GAP)

    # the boxes are the eval-mode model's boxes_in_image, scaled to the panel
    model.eval()
    with torch.no_grad():
        out = model(images[:3])
    px = grid.load()
    for row in range(3):
        top = row * (row_height + GAP) + caption_height(captions)
        innermost = out.boxes_in_image[-1][row]
        tx, ty, tl = (v * 160 for v in innermost.tolist())
        box = (tx - tl, ty - tl, tx + tl, ty + tl)
        hits = [px[x, top + y] == SCALE_COLORS[1] for x, y in edge_pixels(box, (160, 160))]
        assert all(hits)


def test_attention_grid_leaves_an_eval_model_in_eval():
    model = RACNN("tiny", num_classes=2, num_scales=2, input_size=32, zoom_size=24, apn_hidden=8).eval()
    grid = attention_grid(model, torch.randn(2, 3, 32, 32), model.mean, model.std, ["x", "y"])
    assert not any(m.training for m in model.modules())
    assert grid.height == 2 * (caption_height(["1\n2"]) + 160) + GAP
