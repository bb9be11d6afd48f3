"""racnn.inference.api: load a checkpoint, predict on PIL / path / tensor input, map boxes back to the original
image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from inference_fixtures import CLASS_NAMES, IMAGE_SIZES, make_checkpoint, write_images
from racnn.checkpoint import CheckpointError
from racnn.inference.api import ClassScore, Prediction, Predictor, PreparedImage, load


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    images = write_images(root / "images")
    return {**images, "checkpoint": make_checkpoint(root / "tiny.pt", list(images.values()))}


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return load(files["checkpoint"], device="cpu")


def _probs(prediction: Prediction) -> list[float]:
    return [c.prob for c in prediction.topk] + [c.prob for scores in prediction.scales for c in scores]


def test_load_gives_eval_model_config_and_names(predictor):
    assert not predictor.model.training
    assert predictor.class_names == CLASS_NAMES
    assert predictor.config.model.input_size == 64
    x = predictor.transform(Image.new("RGB", (100, 40)))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32


def test_prediction_structure(predictor, files):
    [p] = predictor.predict(files["wide.png"], topk=3)
    assert p.source == str(files["wide.png"]) and p.image_size == (80, 60)
    assert len(p.scales) == 3 and set(p.fused) == {"1+2", "1+2+3"} and p.fused_key == "1+2+3"
    assert p.top == p.fused["1+2+3"][0]
    for scores in [*p.scales, *p.fused.values()]:
        assert len(scores) == 3 and all(isinstance(c, ClassScore) for c in scores)
        probs = [c.prob for c in scores]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert [c.name for c in scores] == [CLASS_NAMES[c.index] for c in scores]
    assert len(p.boxes) == 2 and len(p.boxes_normalized) == 2
    # topk larger than K is cut to K, and then the probabilities sum to one
    [q] = predictor.predict(files["wide.png"], topk=10)
    assert len(q.topk) == 4 and sum(c.prob for c in q.topk) == pytest.approx(1.0, abs=1e-5)


def test_pil_path_and_tensor_agree(predictor, files):
    path = files["tall.jpg"]
    image = Image.open(path).convert("RGB")
    tensor = pil_to_tensor(image).float() / 255  # (3, H, W) in [0, 1]
    by_path, by_pil, by_tensor, by_uint8 = predictor.predict([path, image, tensor, pil_to_tensor(image)])
    assert by_pil.source is None and by_pil.image_size == by_tensor.image_size == (50, 90)
    assert _probs(by_path) == _probs(by_pil)  # same pixels, same pipeline
    for other in (by_tensor, by_uint8):  # tensors are resized by torch, PIL images by PIL: equal up to rounding
        assert [c.index for c in other.topk] == [c.index for c in by_pil.topk]
        assert [s[0].index for s in other.scales] == [s[0].index for s in by_pil.scales]
        np.testing.assert_allclose(_probs(other), _probs(by_pil), atol=2e-2)
        np.testing.assert_allclose(other.boxes, by_pil.boxes, atol=0.5)


def test_batched_tensor_and_batching(predictor, files):
    images = [Image.open(files[n]).convert("RGB") for n in IMAGE_SIZES]
    one_by_one = [predictor.predict(image)[0] for image in images]
    batched = predictor.predict(images, batch_size=2)
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(_probs(a), _probs(b), atol=1e-5)
    square = pil_to_tensor(images[2]).float()[None].repeat(2, 1, 1, 1) / 255  # (2, 3, 70, 70)
    assert len(predictor.predict(square)) == 2


def test_prepared_images_predict_as_their_sources(predictor, files):
    prepared = predictor.prepare(files["tall.jpg"])
    assert prepared.tensor.shape == (3, 64, 64) and prepared.size == (50, 90)
    assert prepared.source == str(files["tall.jpg"])
    by_path, by_prepared = predictor.predict([files["tall.jpg"], prepared])
    assert _probs(by_prepared) == _probs(by_path) and by_prepared.boxes == by_path.boxes
    assert by_prepared.source == by_path.source and by_prepared.image_size == (50, 90)
    with pytest.raises(ValueError, match="prepare takes one image, got 2"):
        predictor.prepare(torch.rand(2, 3, 20, 20))
    with pytest.raises(ValueError, match=r"shape \(3, 32, 32\), this model takes \(3, 64, 64\)"):
        predictor.predict(PreparedImage(torch.zeros(3, 32, 32), (32, 32)))


def test_boxes_map_back_through_resize_and_centre_crop(predictor):
    """A ramp image stores each pixel's own coordinates; the transformed input tells where each pixel came from."""
    width, height = 120, 75
    xs = (torch.arange(width) + 0.5) / width
    ys = (torch.arange(height) + 0.5) / height
    ramp = torch.stack([xs.expand(height, -1), ys[:, None].expand(-1, width), torch.zeros(height, width)])
    x = predictor.transform(ramp)  # (3, 64, 64), normalised
    mean, std = torch.tensor(predictor.mean)[:, None, None], torch.tensor(predictor.std)[:, None, None]
    x = x * std + mean
    side = predictor.input_size
    # input pixels (i, j) centres -> original coordinates, through to_original
    centres = torch.tensor([[j + 0.5, i + 0.5, j + 0.5, i + 0.5] for i, j in [(5, 7), (32, 32), (60, 50)]])
    mapped = predictor.to_original(centres, (width, height))
    for (i, j), (ox, oy, _, _) in zip([(5, 7), (32, 32), (60, 50)], mapped.tolist(), strict=True):
        assert float(x[0, i, j]) * width == pytest.approx(ox, abs=0.6)
        assert float(x[1, i, j]) * height == pytest.approx(oy, abs=0.6)
    # the whole input maps to a centred square, side/resized_side of the original's shorter side
    whole = predictor.to_original(torch.tensor([[0.0, 0.0, side, side]]), (width, height))[0].tolist()
    expected_side = height * side / round(side * predictor.config.data.resize_ratio)
    assert whole[2] - whole[0] == pytest.approx(expected_side, rel=0.02)
    assert whole[3] - whole[1] == pytest.approx(expected_side, rel=1e-5)
    assert whole[0] + whole[2] == pytest.approx(width, abs=2.0)  # centred
    assert whole[1] + whole[3] == pytest.approx(height, abs=2.0)


def test_boxes_are_the_models_boxes_in_original_pixels(predictor, files):
    image = Image.open(files["wide.png"]).convert("RGB")
    [p] = predictor.predict(image)
    out = predictor.model(predictor.transform(image)[None])
    side, (width, height) = predictor.input_size, image.size
    for s, box in enumerate(p.boxes):
        tx, ty, tl = out.boxes_in_image[s][0].tolist()
        assert p.boxes_normalized[s] == pytest.approx((tx, ty, tl), abs=1e-5)
        expected = predictor.to_original(
            torch.tensor([[(tx - tl) * side, (ty - tl) * side, (tx + tl) * side, (ty + tl) * side]]), (width, height)
        )[0]
        assert box == pytest.approx(tuple(expected.tolist()), abs=1e-3)
        assert 0 <= box[0] < box[2] <= width + 1e-3 and 0 <= box[1] < box[3] <= height + 1e-3
    # nested: the scale-3 box lies inside the scale-2 box
    (a1, b1, a2, b2), (c1, d1, c2, d2) = p.boxes
    assert a1 <= c1 and b1 <= d1 and c2 <= a2 and d2 <= b2


def test_to_dict_is_json(predictor, files):
    import json

    [p] = predictor.predict(files["square.png"], topk=2, return_crops=True)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["prediction"]["name"] == p.top.name and d["image_size"] == [70, 70]
    assert set(d["scales"]) == {"1", "2", "3"} and set(d["boxes"]) == {"2", "3"}
    assert "crops" not in d and len(p.crops) == 2 and p.crops[0].size == (48, 48)


def test_bad_inputs_raise_clear_errors(predictor, tmp_path):
    from racnn.data.io import ImageLoadError

    with pytest.raises(ValueError, match=r"un-normalised RGB in \[0, 1\]"):
        predictor.predict(torch.randn(3, 40, 40) * 3)
    with pytest.raises(ValueError, match="must be"):
        predictor.predict(torch.rand(1, 40, 40))
    with pytest.raises(TypeError, match="PIL image, a path"):
        predictor.predict(42)
    with pytest.raises(ImageLoadError, match="file not found"):
        predictor.predict(tmp_path / "missing.jpg")


# -------------------------------------------------------------------------------------------------------------
# incompatible or foreign checkpoints


def test_checkpoint_for_other_num_classes_is_refused(files, tmp_path):
    state = torch.load(files["checkpoint"], weights_only=True)
    state["config"]["model"]["num_classes"] = 7  # the config now describes a model the weights do not fit
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit the model its config describes"):
        load(path, device="cpu")


def test_foreign_and_non_checkpoint_files_are_refused(tmp_path):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a racnn checkpoint"):
        load(foreign, device="cpu")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load(text, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "missing.pt", device="cpu")


def test_hub_entry_point_loads_a_local_checkpoint(files):
    repo = Path(__file__).resolve().parents[1]
    predictor = torch.hub.load(str(repo), "racnn", source="local", checkpoint=str(files["checkpoint"]))
    assert isinstance(predictor, Predictor) and predictor.class_names == CLASS_NAMES
    assert predictor.predict(files["wide.png"])[0].top.name in CLASS_NAMES


def test_predict_runs_in_eval_mode_and_restores_modes(predictor, files):
    expected = predictor.predict(files["wide.png"])[0]
    predictor.model.train()
    try:
        got = predictor.predict(files["wide.png"])[0]
        assert predictor.model.training and all(m.training for m in predictor.model.modules())
    finally:
        predictor.model.eval()
    assert _probs(got) == pytest.approx(_probs(expected), abs=1e-6)


def test_draw_titles_the_file_and_leaves_untrained_heads_out(predictor, files, monkeypatch):
    seen = []

    def spy(image, boxes, crops, captions, **kwargs):
        seen.append(([c.text for c in captions], kwargs["title"]))
        return Image.new("RGB", (1, 1))

    monkeypatch.setattr("racnn.pictures.region_pictures.draw_attention", spy)
    [prediction] = predictor.predict(files["wide.png"], return_crops=True)
    predictor.draw(Image.open(files["wide.png"]), prediction)
    monkeypatch.setattr(predictor.model, "trained_heads", ["s1", "s2", "avg"])  # s3 not trained
    predictor.draw(Image.open(files["wide.png"]), prediction)
    (captions, title), (partial, _) = seen
    top = prediction.top
    assert title == f"wide.png · answer (fused): {top.name} {top.prob:.2f}"
    assert captions[1] == f"scale 2: {prediction.scales[1][0].name} {prediction.scales[1][0].prob:.2f}"
    assert partial[:2] == captions[:2] and partial[2] == "scale 3: not trained yet"
