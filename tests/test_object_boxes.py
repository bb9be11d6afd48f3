"""The oracle-zoom control: the object box made square, moved through the transform, and handed to scale 2."""

from __future__ import annotations

import pytest
import torch

from data_fixtures import make_cub
from racnn import training
from racnn.config import ConfigError, load_config
from racnn.data import build_transforms
from racnn.data.object_boxes import MIN_ORACLE_SIDE, ObjectBoxViews, square_box
from racnn.training import build_split, make_eval_loader
from racnn.training.loop import model_inputs
from test_training import CONFIG


def test_square_box_keeps_the_longer_side_and_moves_inside_the_image():
    wide = square_box(torch.tensor([0.0, 0.2, 0.6, 0.4]))  # 0.6 x 0.2 at the left edge
    assert wide.tolist() == pytest.approx([0.3, 0.3, 0.3])
    edge = square_box(torch.tensor([0.9, 0.4, 1.0, 0.5]))  # side 0.1 touching the right edge: centre stays
    assert edge.tolist() == pytest.approx([0.95, 0.45, 0.05])
    corner = square_box(torch.tensor([0.7, 0.8, 1.0, 1.0]))  # 0.3 x 0.2 in the corner: the square moves up
    assert corner.tolist() == pytest.approx([0.85, 0.85, 0.15])
    outside = square_box(torch.tensor([-0.2, 0.1, 0.5, 0.3]))  # cut by the crop: clipped first, then squared
    assert outside.tolist() == pytest.approx([0.25, 0.25, 0.25])
    whole = square_box(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert whole[0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert whole[1, 2].item() == pytest.approx(MIN_ORACLE_SIDE / 2)  # a point still gets a readable box
    square = square_box(torch.rand(50, 2).sort(dim=0).values.repeat(1, 2)[:, [0, 2, 1, 3]])
    assert ((square[:, :2] - square[:, 2:] >= -1e-6) & (square[:, :2] + square[:, 2:] <= 1 + 1e-6)).all()


class _Photo(torch.utils.data.Dataset):
    """One float image, ``width`` x 100, with its object box at x 0.5-0.7, y 0.2-0.6 of the image."""

    name = "photo"

    def __init__(self, width: int = 200) -> None:
        self.width = width

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return torch.rand(3, 100, self.width), 0

    def object_boxes(self):
        return torch.tensor([[0.5, 0.2, 0.7, 0.6]])


@pytest.mark.parametrize("source_size", [0, 64])
def test_the_box_follows_the_test_transform(source_size):
    # 200 x 100: shorter side to 32 (64 x 32), centre crop 32: x 16..48 of the resized image stays. The box, x 32..44.8
    # and y 6.4..19.2 there, is x 0.5..0.9, y 0.2..0.6 of the input: a square of side 0.4 centred at (0.7, 0.4).
    transform = build_transforms("test", 32, [0.5] * 3, [0.5] * 3, 1.0, False, source_size)
    item, label = ObjectBoxViews(_Photo(), transform)[0]
    assert item["first_boxes"].tolist() == pytest.approx([0.7, 0.4, 0.2], abs=1e-4)
    assert item["images"].shape == (3, 32, 32) and label == 0
    if source_size:
        assert item["source"].shape == (3, 64, 64) and model_inputs(item)[1] is item["source"]
    else:
        assert "source" not in item and model_inputs(item)[1] is None


def test_the_box_follows_a_flip():
    flip = build_transforms("train", 32, [0.5] * 3, [0.5] * 3, 1.0, True)
    flip.transforms[3].p = 1.0  # to image, resize, random crop (none: a square image), flip: always
    item = ObjectBoxViews(_Photo(width=100), flip)[0][0]
    assert item["first_boxes"].tolist() == pytest.approx([0.4, 0.4, 0.2], abs=1e-4)  # x 0.5..0.7 -> 0.3..0.5


def test_the_pretraining_target_is_a_target_not_the_models_box():
    transform = build_transforms("test", 32, [0.5] * 3, [0.5] * 3, 1.0, False)
    item = ObjectBoxViews(_Photo(), transform, key="object_boxes")[0][0]
    assert item["object_boxes"].tolist() == pytest.approx([0.7, 0.4, 0.2], abs=1e-4) and "first_boxes" not in item
    assert model_inputs(item)[2] is None  # the model never sees it
    with pytest.raises(ValueError, match="key"):
        ObjectBoxViews(_Photo(), transform, key="boxes")


def test_only_the_train_split_carries_the_pretraining_target(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=4)
    settings = ["data.dataset=cub", f"data.root={root}", "data.options={}", "train.pretrain_target=object"]
    cfg = load_config(CONFIG, settings)
    assert isinstance(build_split(cfg, "train", [0.5] * 3, [0.5] * 3), ObjectBoxViews)
    assert not isinstance(build_split(cfg, "test", [0.5] * 3, [0.5] * 3), ObjectBoxViews)
    bare = make_cub(tmp_path / "bare", boxes=False)
    cfg = load_config(CONFIG, [*settings[:1], f"data.root={bare}", *settings[2:]])
    with pytest.raises(ConfigError, match="pretrain_target=object needs object boxes"):
        build_split(cfg, "train", [0.5] * 3, [0.5] * 3)


def test_a_data_set_without_boxes_is_refused_in_words(tmp_path):
    root = make_cub(tmp_path / "cub", boxes=False)
    cfg = load_config(CONFIG, ["data.dataset=cub", f"data.root={root}", "data.options={}", "model.oracle_zoom=true"])
    with pytest.raises(ConfigError, match="oracle_zoom needs object boxes"):
        build_split(cfg, "test", [0.5] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match="one region"):
        load_config(CONFIG, ["model.oracle_zoom=true", "model.regions=2"])


def test_cub_batches_carry_the_boxes_and_the_model_uses_them(tmp_path):
    root = make_cub(tmp_path / "cub")
    cfg = load_config(CONFIG, ["data.dataset=cub", f"data.root={root}", "data.options={}", "model.oracle_zoom=true"])
    data = build_split(cfg, "test", [0.5] * 3, [0.5] * 3)
    batch = next(iter(make_eval_loader(data, 4)))
    images, source, boxes = model_inputs(batch[0])
    assert images.shape == (4, 3, 64, 64) and source is None and boxes.shape == (4, 3)
    from racnn.modeling.model import RACNN

    model = RACNN.from_config(cfg.model.__class__(**{**vars(cfg.model), "num_classes": 3})).eval()
    with torch.no_grad():
        out = model(images, source, boxes)
    assert torch.allclose(out.boxes[0], boxes)  # scale 2's box is the oracle's, not the APN's
    with pytest.raises(ValueError, match="first_boxes"):
        model(images, None, boxes[:2])


def test_an_oracle_run_trains_and_scores_its_boxes_on_the_object(tmp_path):
    overrides = [f"train.output_dir={tmp_path}", "train.visualize=false", "model.oracle_zoom=true",
                 "data.synthetic_train=64", "data.synthetic_test=32", "train.max_steps_per_epoch=2",
                 "train.apn_pretrain.epochs=0", "train.apn.epochs=0", "model.fixed_side=[0.5, 0.5]"]  # fmt: skip
    metrics = training.fit(load_config(CONFIG, overrides)).metrics
    # scale 2's box is the square around each object: it holds the whole object and moves as the objects do;
    # scale 3's (a fixed centred half of it) lies inside the object
    assert metrics["box_covers_object_s2"] > 0.99 and metrics["box_in_object_s2"] == 1.0
    for axis in "xy":
        assert metrics[f"box_centre_std_{axis}_s2"] == pytest.approx(metrics[f"object_centre_std_{axis}"], abs=0.01)
    assert metrics["box_side_corr_s2"] > 0.5 and metrics["box_on_object_s3"] > 0.99
