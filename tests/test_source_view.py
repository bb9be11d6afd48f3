"""data.source_size: the loaders' aligned source view, training and evaluation with it, predict and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import racnn.training as training
from racnn.checkpoint import save_checkpoint
from racnn.cli import main
from racnn.config import RECIPES, Config, ConfigError, DataConfig, ModelConfig, config_to_dict, load_config
from racnn.data import SourceViews, build_transforms
from racnn.inference.api import Predictor, load
from racnn.modeling.model import RACNN

pytestmark = pytest.mark.usefixtures("one_thread")

MARK = (60, 30, 12)  # x, y and side of a white square on a black 160 x 120 photo


def _photo() -> Image.Image:
    image = Image.new("RGB", (160, 120))
    x, y, side = MARK
    image.paste((255, 255, 255), (x, y, x + side, y + side))
    return image


def _centre(view: torch.Tensor) -> torch.Tensor:
    """Normalised (x, y) of the brightness centroid of a ``(3, H, W)`` view."""
    weight = view.mean(0).clamp(min=0)
    height, width = weight.shape
    xs = (torch.arange(width) + 0.5) / width
    ys = (torch.arange(height) + 0.5) / height
    total = weight.sum()
    return torch.stack([(weight.sum(0) * xs).sum() / total, (weight.sum(1) * ys).sum() / total])


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_two_views_show_the_same_place(split):
    transform = build_transforms(split, 32, (0, 0, 0), (1, 1, 1), resize_ratio=1.25, hflip=True, source_size=96)
    assert isinstance(transform, SourceViews)
    centres = []
    for seed in range(8):
        torch.manual_seed(seed)
        small, big = transform(_photo())
        assert small.shape == (3, 32, 32) and big.shape == (3, 96, 96)
        assert small.max() > 0.5  # the mark is in the crop
        torch.testing.assert_close(_centre(small), _centre(big), atol=0.5 / 32, rtol=0)
        centres.append(_centre(big))
    spread = torch.stack(centres)[:, 0]
    if split == "train":  # random crops and flips moved the mark around; both views followed
        assert spread.max() - spread.min() > 0.2
    else:
        assert spread.max() - spread.min() == 0


def test_source_size_below_the_input_size_is_refused():
    with pytest.raises(ValueError, match="source_size"):
        build_transforms("test", 64, (0, 0, 0), (1, 1, 1), source_size=32)
    with pytest.raises(ConfigError, match="data.source_size"):
        load_config(RECIPES / "synthetic_tiny.yaml", ["model.input_size=64", "data.source_size=32"])
    assert build_transforms("test", 64, (0, 0, 0), (1, 1, 1), source_size=0)(_photo()).shape == (3, 64, 64)


TINY = [
    "model.input_size=32",
    "model.zoom_size=32",
    "model.apn_pool=2",
    "model.apn_hidden=16",
    "data.source_size=64",
    "data.synthetic_train=24",
    "data.synthetic_test=12",
    "data.synthetic_classes=3",
    "data.batch_size=8",
    "data.eval_batch_size=12",
    "train.rounds=1",
    "train.warmup.epochs=0",
    "train.apn_pretrain.epochs=1",
    "train.cls.epochs=1",
    "train.apn.epochs=1",
    "train.fusion.epochs=1",
    "train.visualize=true",  # the attention pictures run the model on [input, source] pairs too
]


def test_tiny_training_passes_the_source_everywhere(tmp_path, monkeypatch):
    sources = []
    forward = RACNN.forward

    def spy(self, images, source=None):
        sources.append(None if source is None else tuple(source.shape[1:]))
        return forward(self, images, source)

    monkeypatch.setattr(RACNN, "forward", spy)
    cfg = load_config(RECIPES / "synthetic_tiny.yaml", [*TINY, f"train.output_dir={tmp_path}"])
    result = training.fit(cfg)
    assert sources and set(sources) == {(3, 64, 64)}  # every phase, evaluation, fusion init and picture
    assert 0 <= result.metrics["top1_fused"] <= 1 and result.metrics["n_images"] == 12
    assert list(result.run_dir.glob("attention_round*.png"))
    sources.clear()
    assert main(["eval", "--checkpoint", str(result.run_dir), "--out", str(tmp_path / "eval")]) == 0
    assert sources and set(sources) == {(3, 64, 64)}  # racnn eval rebuilds the views from the stored config

    # Inference from the run: the predictor builds the source view from the photo's own pixels.
    predictor = load(result.run_dir, device="cpu")
    prepared = predictor.prepare(_photo())
    assert prepared.tensor.shape == (3, 32, 32) and prepared.source_view.shape == (3, 64, 64)
    sources.clear()
    [prediction] = predictor.predict(_photo(), topk=2, return_crops=True)
    assert sources == [(3, 64, 64)]
    assert len(prediction.boxes) == 2 and len(prediction.crops) == 2
    with pytest.raises(ValueError, match="source view"):
        predictor.predict(prepared.__class__(prepared.tensor, prepared.size))
    _photo().save(tmp_path / "photo.png")
    sources.clear()
    assert main(["predict", "--checkpoint", str(result.run_dir), str(tmp_path / "photo.png")]) == 0
    assert sources == [(3, 64, 64)]  # racnn predict too


def _predictor(source_size: int) -> Predictor:
    torch.manual_seed(0)
    cfg = Config(
        model=ModelConfig(backbone="tiny", num_classes=3, input_size=32, zoom_size=32, apn_pool=2, apn_hidden=16),
        data=DataConfig(resize_ratio=1.25, source_size=source_size),
    )
    return Predictor(RACNN.from_config(cfg.model), cfg, ["a", "b", "c"], device="cpu", amp="none")


def test_boxes_map_back_to_the_photo_through_the_source_geometry():
    plain, with_source = _predictor(0), _predictor(96)
    whole_input = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    whole_source = torch.tensor([[0.0, 0.0, 96.0, 96.0]])
    # The same centre crop of the photo, found from either side's pixels: to the rounding of the 32 px input's
    # crop offset (half an input pixel), under one input pixel in photo pixels; a box read in the wrong side's
    # pixels would be off by a factor of 3.
    for size in [(160, 120), (90, 200)]:
        expected = plain.to_original(whole_input, size)
        got = with_source.to_original(whole_source, size)
        torch.testing.assert_close(got, expected, atol=min(size) / 32, rtol=0)


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_export_takes_the_source_as_a_second_input_with_parity(tmp_path, capsys, fmt, suffix):
    # A 100 px source zoomed to 24 px: a three-level pyramid with an odd side (100, 50, 25, 13), which the ONNX
    # graph pools with matrix products.
    cfg = Config(
        model=ModelConfig(backbone="tiny", num_classes=3, input_size=32, zoom_size=24, apn_pool=2, apn_hidden=16),
        data=DataConfig(source_size=100),
    )
    torch.manual_seed(0)
    model = RACNN.from_config(cfg.model)
    path = save_checkpoint(
        tmp_path / "ck.pt", {"config": config_to_dict(cfg), "model": model.state_dict(), "class_names": ["a", "b", "c"]}
    )
    out = tmp_path / f"m.{suffix}"
    code = main(["export", "--checkpoint", str(path), "--format", fmt, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "max abs difference" in stdout and "(ok," in stdout, stdout
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["source_size"] == 100 and meta["input_names"] == ["images", "source"]
    assert meta["input_shapes"] == {"images": ["batch", 3, 32, 32], "source": ["batch", 3, 100, 100]}
    preprocessing = meta["preprocessing"]  # the geometry runs at the source's side; images are that crop resized
    assert preprocessing["crop"]["size"] == 100 and preprocessing["resize"]["shorter_side"] == round(
        100 * cfg.data.resize_ratio
    )
    assert (
        set(preprocessing["inputs"]) == {"images", "source"}
        and "resized to 32 x 32" in preprocessing["inputs"]["images"]
    )
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images", "source"]


def _head_regions(dataset, side: int, inner: bool = True) -> list[torch.Tensor]:
    """The middle of each sample's head disc (``inner``: a quarter of its radius; else the head's whole box),
    ``(3, h, w)``, with the image reduced to ``side`` as SourceViews makes scale 1's input (antialiased)."""
    regions = []
    for i in range(len(dataset)):
        image = torch.nn.functional.interpolate(
            dataset.render(i)[None], size=side, mode="bilinear", antialias=True, align_corners=False
        )[0]
        x1, y1, x2, y2 = dataset.sample_info(i).detail_box
        cx, cy, half = (x1 + x2) / 2 * side, (y1 + y2) / 2 * side, (x2 - x1) / (8 if inner else 2) * side
        regions.append(image[:, round(cy - half) : round(cy + half) + 1, round(cx - half) : round(cx + half) + 1])
    return regions


def _head_spread(dataset, side: int, inner: bool = True) -> float:
    """Mean over samples of the pixel std inside the middle of the head disc (or its box), reduced to ``side``."""
    return float(torch.stack([r.flatten(1).std(1).mean() for r in _head_regions(dataset, side, inner)]).mean())


def test_synthetic_detail_period_hides_the_class_from_scale_1():
    from racnn.data import SyntheticFineGrained, build_dataset

    # The demo's geometry: rendered at 256 px, fine stripes of 4 px, scale 1 at 64 px (1 px a period).
    default = SyntheticFineGrained(6, num_classes=4, image_size=256, seed=3)
    fine = build_dataset("synthetic", None, "train", num_samples=6, num_classes=4, image_size=256, seed=3,
                         detail_period=4)  # fmt: skip
    assert fine.sample_info(2) == default.sample_info(2)  # only the head's pattern differs
    # In the head's middle the fine stripes are there at the source's resolution and gone at scale 1's, while
    # the default stripes (about 2.5 px a period there) survive.
    assert _head_spread(fine, 256) > 0.15
    assert _head_spread(fine, 64) < 0.1 * _head_spread(fine, 256)
    assert _head_spread(default, 64) > 5 * _head_spread(fine, 64)
    # Around them the head keeps coarse stripes, which a coarse look still reads: they tell a pair of classes.
    assert fine.classes == [
        "red-cyan horizontal, diagonal-down fine", "red-cyan horizontal, diagonal-up fine",
        "red-cyan vertical, diagonal-down fine", "red-cyan vertical, diagonal-up fine",
    ]  # fmt: skip
    assert _head_spread(fine, 64, inner=False) > 5 * _head_spread(fine, 64)
    with pytest.raises(ValueError, match="detail_period"):
        SyntheticFineGrained(4, image_size=64, detail_period=1)
