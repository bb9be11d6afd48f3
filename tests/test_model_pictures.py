"""racnn.pictures.model_pictures: attention_grid's rows and boxes, untrained heads left out, the model's modes
restored."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from picture_helpers import colours, edge_pixels
from racnn.modeling.model import RACNN
from racnn.pictures.model_pictures import OBJECT_COLOR, attention_grid, attention_rows
from racnn.pictures.visualize import GAP, MIN_PANEL, RIGHT_COLOR, ROW_GAP, SCALE_COLORS, WRONG_COLOR


def test_attention_grid_rows_boxes_and_restored_modes():
    torch.manual_seed(0)
    model = RACNN("tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=48, apn_hidden=16)
    model.train()
    model.backbones[1].eval()  # e.g. frozen batch norm during an APN phase: must stay frozen
    modes = {name: m.training for name, m in model.named_modules()}
    mean, std = model.mean, model.std
    images = torch.randn(5, 3, 64, 64)
    args = (model, images, mean, std, ["a", "b", "c"])

    rows = attention_rows(*args, targets=[0, 1, 2, 0, 1], max_images=3)
    grid = attention_grid(*args, targets=[0, 1, 2, 0, 1], max_images=3)

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert len(rows) == 3 and all(layout.panel == (MIN_PANEL, MIN_PANEL) for _, layout in rows)  # 64 px upscaled
    assert grid.width == MIN_PANEL + 2 * (GAP + MIN_PANEL)
    # the grid is its header, then the rows ROW_GAP apart
    y = grid.height - sum(row.height for row, _ in rows) - 2 * ROW_GAP
    assert SCALE_COLORS[0] in colours(grid.crop((0, 0, grid.width, y)))  # the legend
    for row, _ in rows:
        assert np.array_equal(np.asarray(grid.crop((0, y, row.width, y + row.height))), np.asarray(row))
        y += row.height + ROW_GAP

    # the boxes are the eval-mode model's boxes_in_image, scaled to the panel
    model.eval()
    with torch.no_grad():
        out = model(images[:3])
    for i, (row, layout) in enumerate(rows):
        px = row.load()
        tx, ty, tl = (v * MIN_PANEL for v in out.boxes_in_image[-1][i].tolist())
        box = (tx - tl, ty - tl, tx + tl, ty + tl)
        assert all(px[x, layout.top + y] == SCALE_COLORS[1] for x, y in edge_pixels(box, layout.panel))
        # every answer is marked right or wrong: the true class is known
        caption_strip = colours(row.crop((0, layout.header_height, row.width, layout.top)))
        assert {RIGHT_COLOR, WRONG_COLOR} & caption_strip


def test_attention_grid_leaves_untrained_heads_out(monkeypatch):
    model = RACNN("tiny", num_classes=2, num_scales=2, input_size=32, zoom_size=24, apn_hidden=8).eval()
    seen = []

    def spy(image, boxes, crops, captions, **kwargs):
        seen.append(([c.text for c in captions], kwargs["title"].text))
        return Image.new("RGB", (10, 10))

    monkeypatch.setattr("racnn.pictures.region_pictures.draw_attention", spy)
    images = torch.randn(1, 3, 32, 32)
    model.trained_heads = ["s1", "s2", "avg"]  # no fusion phase yet
    attention_grid(model, images, model.mean, model.std, ["x", "y"], targets=[0])
    model.trained_heads = ["s1", "avg"]
    attention_grid(model, images, model.mean, model.std, ["x", "y"])
    model.trained_heads = None  # unknown (an old checkpoint): all of them
    attention_grid(model, images, model.mean, model.std, ["x", "y"])
    (first, title), (second, _), (third, last_title) = seen
    assert "answer (mean of scales)" in title and "fused" not in title
    assert all("not trained" not in c for c in first)
    assert second[0].startswith("scale 1: ") and second[1] == "scale 2: not trained yet"
    assert "answer (fused)" in last_title and all("not trained" not in c for c in third)


def test_attention_grid_answers_with_the_head_it_is_asked_for(monkeypatch):
    """A run scored on another head (train.best_metric) captions its pictures with that head, once trained."""
    model = RACNN("tiny", num_classes=2, num_scales=2, input_size=32, zoom_size=24, apn_hidden=8).eval()
    titles = []

    def spy(image, boxes, crops, captions, **kwargs):
        titles.append(kwargs["title"].text)
        return Image.new("RGB", (10, 10))

    monkeypatch.setattr("racnn.pictures.region_pictures.draw_attention", spy)
    images = torch.randn(1, 3, 32, 32)
    model.trained_heads = ["s1", "s2", "avg", "1+2", "fused"]  # after the fusion phase
    for answer in ("fused", "s2", "avg"):
        attention_grid(model, images, model.mean, model.std, ["x", "y"], answer=answer)
    model.trained_heads = ["s1", "s2", "avg"]  # before it: the mean of the scales stands in for fused
    attention_grid(model, images, model.mean, model.std, ["x", "y"], answer="fused")
    assert ["answer (fused)" in titles[0], "answer (s2)" in titles[1]] == [True, True]
    assert "answer (mean of scales)" in titles[2] and "answer (mean of scales)" in titles[3]


def test_attention_grid_leaves_an_eval_model_in_eval():
    model = RACNN("tiny", num_classes=2, num_scales=2, input_size=32, zoom_size=24, apn_hidden=8).eval()
    grid = attention_grid(model, torch.randn(2, 3, 32, 32), model.mean, model.std, ["x", "y"])
    assert not any(m.training for m in model.modules())
    assert grid.width == MIN_PANEL + GAP + MIN_PANEL


def test_the_annotated_box_is_drawn_and_listed_in_the_legend():
    torch.manual_seed(0)
    model = RACNN(num_classes=3, num_scales=2, input_size=32, zoom_size=32, apn_pool=2, apn_hidden=8).eval()
    images = torch.zeros(2, 3, 32, 32)  # grey after denormalising
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75], [float("nan")] * 4])
    plain = attention_grid(model, images, [0.5] * 3, [0.5] * 3, ["a", "b", "c"])
    marked = attention_grid(model, images, [0.5] * 3, [0.5] * 3, ["a", "b", "c"], object_boxes=boxes)
    assert marked.size[1] >= plain.size[1] and not np.array_equal(np.asarray(marked), np.asarray(plain))
    rows = attention_rows(model, images, [0.5] * 3, [0.5] * 3, ["a", "b", "c"], object_boxes=boxes)
    bare = attention_rows(model, images, [0.5] * 3, [0.5] * 3, ["a", "b", "c"])
    first, first_bare = np.asarray(rows[0][0]), np.asarray(bare[0][0])
    second, second_bare = np.asarray(rows[1][0]), np.asarray(bare[1][0])
    magenta = np.array(OBJECT_COLOR)
    assert (first == magenta).all(-1).sum() > 50 and (first_bare == magenta).all(-1).sum() == 0  # the box on image 1
    assert (second == second_bare).all()  # image 2's box is unknown: nothing drawn
