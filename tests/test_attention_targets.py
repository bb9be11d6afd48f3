"""Image-dependent APN pre-training targets: the class activation map, its window, its extent."""

from __future__ import annotations

import pytest
import torch

from racnn import training
from racnn.config import ConfigError, load_config
from racnn.modeling.crop import attention_crop
from racnn.training.attention_targets import (
    cam_targets,
    class_activation_map,
    extent_boxes,
    object_targets,
    zoom_gain_targets,
)
from test_training import CONFIG


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Two channels on an 8 x 8 map: channel 0 lights a 2 x 2 spot at the top left, channel 1 a 4 x 4 block at the
    bottom right. Class 0's classifier reads channel 0, class 1's channel 1."""
    fmap = torch.zeros(2, 2, 8, 8)
    fmap[:, 0, 0:2, 0:2] = 1.0
    fmap[:, 1, 4:8, 4:8] = 1.0
    return fmap, torch.eye(2)


def test_the_cam_follows_the_true_class_not_the_strongest_channel():
    fmap, weight = _maps()
    cam = class_activation_map(fmap, weight, torch.tensor([0, 1]))
    assert cam[0, 0, 0] == 1 and cam[0, 6, 6] == 0  # class 0: the spot
    assert cam[1, 6, 6] == 1 and cam[1, 0, 0] == 0  # class 1: the block
    windows = cam_targets(fmap, weight, torch.tensor([0, 1]), "cam", side=0.25, threshold=0.5, min_side=0.1)
    assert windows[0].tolist() == pytest.approx([0.125, 0.125, 0.125])
    assert windows[1, :2].tolist() == pytest.approx([0.75, 0.75], abs=0.07)  # a window inside the block


def test_the_extent_box_grows_with_the_object():
    fmap, weight = _maps()
    boxes = cam_targets(fmap, weight, torch.tensor([0, 1]), "cam_extent", side=0.5, threshold=0.5, min_side=0.1)
    small, large = boxes[0], boxes[1]
    assert 0.2 <= 2 * small[2] <= 0.3 and small[:2].tolist() == pytest.approx([0.125, 0.125], abs=0.02)
    assert 0.45 <= 2 * large[2] <= 0.55 and large[:2].tolist() == pytest.approx([0.75, 0.75], abs=0.02)
    inside = (boxes[:, :2] - boxes[:, 2:] >= -1e-6) & (boxes[:, :2] + boxes[:, 2:] <= 1 + 1e-6)
    assert inside.all()


def test_a_flat_map_gives_the_whole_image_and_min_side_holds():
    assert extent_boxes(torch.ones(1, 7, 7), 0.5, 0.3)[0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    point = torch.zeros(1, 7, 7)
    point[0, 3, 3] = 1.0
    assert 2 * extent_boxes(point, 0.9, 0.4)[0, 2].item() == pytest.approx(0.4)


def test_config_checks_of_the_cam_targets():
    with pytest.raises(ConfigError, match="pretrain_target must be"):
        load_config(CONFIG, ["train.pretrain_target=saliency"])
    with pytest.raises(ConfigError, match="warm-up"):
        load_config(CONFIG, ["train.pretrain_target=cam", "train.warmup.epochs=0"])
    with pytest.raises(ConfigError, match="one region"):
        load_config(CONFIG, ["train.pretrain_target=cam_extent", "model.regions=2"])
    with pytest.raises(ConfigError, match="pretrain_threshold"):
        load_config(CONFIG, ["train.pretrain_threshold=1.5"])
    with pytest.raises(ConfigError, match="oracle_zoom replaces"):
        load_config(CONFIG, ["train.pretrain_target=object", "model.oracle_zoom=true"])
    with pytest.raises(ConfigError, match="warm-up"):  # the finer APNs' targets are CAM extents
        load_config(CONFIG, ["train.pretrain_target=object", "train.warmup.epochs=0"])


def test_object_targets_are_squares_of_at_least_the_apn_side_inside_the_image():
    boxes = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.05], [0.4, 0.6, 0.4]])  # (cx, cy, half side) as handed over
    goal = object_targets(boxes, min_side=1 / 3)
    assert goal[0].tolist() == pytest.approx([0.5, 0.5, 1 / 6])  # grown to the APN's smallest side, same centre
    assert goal[1].tolist() == pytest.approx([1 - 1 / 6, 0.2, 1 / 6])  # grown at the right edge: moved inside
    assert goal[2].tolist() == pytest.approx([0.4, 0.6, 0.4])  # large enough and inside: as it was


def test_a_run_pretrains_its_apns_on_the_cam_extent(tmp_path):
    overrides = [f"train.output_dir={tmp_path}", "train.visualize=false", "train.pretrain_target=cam_extent",
                 "data.synthetic_train=64", "data.synthetic_test=32", "train.max_steps_per_epoch=2",
                 "train.warmup.epochs=1", "train.rounds=0", "train.fusion.epochs=0"]  # fmt: skip
    result = training.fit(load_config(CONFIG, overrides))
    losses = [row for row in result.history if row["phase"] == "apn_pretrain"]
    assert len(losses) == 2  # the APNs move towards the CAM's boxes: the regression loss falls
    assert losses[-1]["train_apn_pre1"] < losses[0]["train_apn_pre1"]
    assert "box_side_corr_s2" in result.metrics  # the synthetic set has object boxes: the boxes are scored


def test_a_run_pretrains_its_first_apn_on_the_object_boxes(tmp_path, monkeypatch):
    from racnn.training import steps

    seen = []
    real = steps.object_targets
    monkeypatch.setattr(steps, "object_targets", lambda boxes, side: seen.append(boxes) or real(boxes, side))
    overrides = [f"train.output_dir={tmp_path}", "train.visualize=false", "train.pretrain_target=object",
                 "data.synthetic_train=64", "data.synthetic_test=32", "train.max_steps_per_epoch=2",
                 "train.warmup.epochs=1", "train.rounds=0", "train.fusion.epochs=0",
                 "train.apn_pretrain.epochs=2"]  # fmt: skip
    result = training.fit(load_config(CONFIG, overrides))
    losses = [row for row in result.history if row["phase"] == "apn_pretrain"]
    assert len(losses) == 2 and losses[-1]["train_apn_pre1"] < losses[0]["train_apn_pre1"]
    assert len(seen) == 4 and all(boxes.shape[1] == 3 for boxes in seen)  # two steps of two epochs, one batch each
    objects = torch.cat(seen)  # the synthetic objects differ from image to image: the targets do too
    assert objects[:, 2].std() > 0 and objects[:, 0].std() > 0
    assert "box_side_corr_s2" in result.metrics


class _RingJudge(torch.nn.Module):
    """Scales 2 and 3 as a judge of zooms: the backbone passes the zoom through, the classifier's class-0 logit is 20
    times the zoom's mean of channel 0, which is lit on a ring around the image's centre (between the squares of
    side 0.25 and 0.5). So class 0 is surest of the zoom that holds the ring and little else (the square of side
    0.5), class 1 of the zoom that holds none of it."""

    zoom_size = 32

    def __init__(self):
        super().__init__()
        self.backbones = torch.nn.ModuleList([torch.nn.Identity()] * 3)
        judge = torch.nn.Linear(3, 2, bias=False)
        judge.weight.data = torch.tensor([[20.0, 0, 0], [0, 0, 0]])
        self.classifiers = torch.nn.ModuleList([judge] * 3)

    def _zoom(self, images, source, boxes):
        return attention_crop(images, boxes, self.zoom_size, k=50.0)

    @staticmethod
    def image() -> torch.Tensor:
        ring = torch.zeros(1, 3, 64, 64)
        ring[:, 0, 16:48, 16:48] = 1.0
        ring[:, 0, 24:40, 24:40] = 0.0
        return ring


def test_the_zoom_gain_target_is_the_side_the_next_scale_is_surest_of():
    model, images = _RingJudge(), _RingJudge.image().repeat(2, 1, 1, 1)
    labels = torch.tensor([0, 1])
    first = torch.tensor([[0.5, 0.5, 0.3], [0.5, 0.5, 0.3]])  # the APN's own box: only its centre is read
    goal = zoom_gain_targets(model, images, None, [first], 0, labels, [0.25, 0.5, 1.0])
    assert goal[0].tolist() == pytest.approx([0.5, 0.5, 0.25])  # class 0: the square that holds the ring
    assert goal[1].tolist() == pytest.approx([0.5, 0.5, 0.125])  # class 1: the square inside it
    # off-centre, the candidates keep the APN's centre where they fit and move inside the image where they do not
    shifted = torch.tensor([[0.3, 0.6, 0.2], [0.3, 0.6, 0.2]])
    goal = zoom_gain_targets(model, images, None, [shifted], 0, labels, [0.25, 1.0])
    assert goal[0].tolist() == pytest.approx([0.3, 0.6, 0.125])  # class 0: the small square, on the ring's side
    assert goal[1].tolist() == pytest.approx([0.5, 0.5, 0.5])  # class 1: the whole image (the least ring)


def test_the_zoom_gain_target_of_a_finer_apn_is_in_its_own_frame():
    model, images = _RingJudge(), _RingJudge.image()
    first = torch.tensor([[0.5, 0.5, 0.25]])  # scale 2 reads the central half: the ring fills its whole frame
    second = torch.tensor([[0.5, 0.5, 0.3]])
    goal = zoom_gain_targets(model, images, None, [first, second], 1, torch.tensor([0]), [0.5, 1.0])
    assert goal[0].tolist() == pytest.approx([0.5, 0.5, 0.5])  # the whole of scale 2's input holds the ring
