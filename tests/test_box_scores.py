"""The attention's scores against object boxes: hand-made boxes whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from racnn.training.box_scores import box_scores, box_sums, object_scores, object_sums
from racnn.training.results_table import render, results_table

NAN = float("nan")


def _scores(boxes, objects, key="s2"):
    boxes, objects = torch.tensor(boxes), torch.tensor(objects)
    return {**box_scores(box_sums(boxes, objects), key), **object_scores(object_sums(objects))}


def test_a_box_on_the_object_scores_one_and_a_box_beside_it_zero():
    # box 1 is the object exactly; box 2 lies beside its object; the third object is unknown
    boxes = [[0.5, 0.5, 0.25], [0.25, 0.25, 0.125], [0.5, 0.5, 0.5]]
    objects = [[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0], [NAN] * 4]
    m = _scores(boxes, objects)
    assert m["box_iou_s2"] == pytest.approx(0.5)  # (1 + 0) / 2 known
    assert m["box_in_object_s2"] == pytest.approx(0.5)
    assert m["box_covers_object_s2"] == pytest.approx(0.5)
    assert m["box_on_object_s2"] == pytest.approx(0.5)
    assert m["n_object_boxes"] == 2
    assert m["box_side_s2"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)  # over every image, known or not


def test_cover_and_on_object_tell_a_wide_box_from_a_box_inside_the_object():
    objects = [[0.25, 0.25, 0.75, 0.75]]  # side 0.5, area 0.25
    wide = _scores([[0.5, 0.5, 0.5]], objects)  # the whole image: covers the object, a quarter of it on it
    assert wide["box_covers_object_s2"] == pytest.approx(1.0)
    assert wide["box_on_object_s2"] == pytest.approx(0.25)
    assert wide["box_iou_s2"] == pytest.approx(0.25)
    small = _scores([[0.5, 0.5, 0.125]], objects)  # side 0.25 in the object's middle: inside it, a quarter of it
    assert small["box_on_object_s2"] == pytest.approx(1.0)
    assert small["box_covers_object_s2"] == pytest.approx(0.25)


def test_spread_and_the_side_size_correlation():
    # Objects of sides 0.2, 0.4, 0.6 at three places; boxes that follow them exactly, and a fixed centred box
    objects = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.3, 0.2, 0.7, 0.6], [0.4, 0.4, 1.0, 1.0]])
    centres = (objects[:, :2] + objects[:, 2:]) / 2
    following = torch.cat([centres, (objects[:, 2:3] - objects[:, 0:1]) / 2], dim=1)
    m = {**box_scores(box_sums(following, objects), "s2"), **object_scores(object_sums(objects))}
    assert m["box_side_corr_s2"] == pytest.approx(1.0)
    assert m["box_iou_s2"] == pytest.approx(1.0)
    assert m["box_centre_std_x_s2"] == pytest.approx(m["object_centre_std_x"])
    assert m["box_centre_std_x_s2"] == pytest.approx(centres[:, 0].std(unbiased=False).item())
    assert m["object_size_mean"] == pytest.approx(0.4)
    assert m["box_side_std_s2"] == pytest.approx(torch.tensor([0.2, 0.4, 0.6]).std(unbiased=False).item())
    fixed = box_scores(box_sums(torch.tensor([[0.5, 0.5, 0.25]] * 3), objects), "s2")
    assert fixed["box_centre_std_x_s2"] == 0 and fixed["box_side_std_s2"] == 0
    assert math.isnan(fixed["box_side_corr_s2"])  # a side that never changes has no correlation
    rounding = torch.tensor([[0.5, 0.5, 0.335]] * 3, dtype=torch.float64) + torch.tensor([0.0, 3e-8, -2e-8])[:, None]
    assert math.isnan(box_scores(box_sums(rounding, objects), "s2")["box_side_corr_s2"])  # float32 noise: constant
    shrinking = following.clone()
    shrinking[:, 2] = torch.tensor([0.3, 0.2, 0.1])  # sides against sizes: perfectly anti-correlated
    assert box_scores(box_sums(shrinking, objects), "s2")["box_side_corr_s2"] == pytest.approx(-1.0)


def test_sums_add_up_over_batches_as_over_one():
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(10, 2, generator=g) * 0.5 + 0.25, torch.rand(10, 1, generator=g) * 0.25 + 0.1], 1)
    corner = torch.rand(10, 2, generator=g) * 0.5
    objects = torch.cat([corner, corner + 0.2 + torch.rand(10, 2, generator=g) * 0.3], 1)
    objects[3] = NAN
    whole = box_scores(box_sums(boxes, objects), "s3")
    split = box_scores(box_sums(boxes[:4], objects[:4]) + box_sums(boxes[4:], objects[4:]), "s3")
    assert whole.keys() == split.keys()
    for key in whole:
        assert split[key] == pytest.approx(whole[key])


def test_without_object_boxes_only_the_spread_is_reported():
    m = box_scores(box_sums(torch.tensor([[0.4, 0.5, 0.2], [0.6, 0.5, 0.3]]), None), "s2")
    assert set(m) == {"box_side_s2", "box_side_std_s2", "box_centre_std_x_s2", "box_centre_std_y_s2"}
    assert m["box_centre_std_x_s2"] == pytest.approx(0.1)
    assert object_scores(object_sums(torch.full((2, 4), NAN))) == {}


def test_the_eval_table_shows_every_score_and_the_objects_spread():
    m = _scores([[0.5, 0.5, 0.25], [0.3, 0.3, 0.2]], [[0.25, 0.25, 0.75, 0.75], [0.1, 0.1, 0.5, 0.5]])
    heads = {f"top{k}_{h}": 0.5 for k in (1, 5) for h in ("s1", "s2", "1+2", "fused", "avg")}
    base = {**heads, "n_images": 2, "rank_loss": 0.0}
    lines = render(results_table({**base, **m}, 2)).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("attention"))
    assert lines[header].split()[1:4] == ["side", "%", "centre"]
    box = lines[header + 1]
    assert box.startswith("box s2") and f"{m['box_iou_s2']:.3f}" in box
    assert f"{100 * m['box_covers_object_s2']:.1f}" in box and f"{m['box_side_corr_s2']:.2f}" in box
    assert len(lines) == header + 3 and lines[-1].startswith("object boxes (2 images)")  # one row per box only
    bare = box_scores(box_sums(torch.tensor([[0.5, 0.5, 0.25]]), None), "s2")
    lines = render(results_table({**base, **bare}, 2)).splitlines()
    assert " - " in lines[-2] and lines[-1].startswith("no object boxes")
    markdown = render(results_table({**base, **m}, 2), "markdown")
    assert "| attention | side % | centre in % | covers % | on obj. % | IoU |" in markdown
