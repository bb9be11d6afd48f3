"""Several attention regions per scale (model.regions, issue #12): one region is today's model exactly; K regions
give valid boxes, gradients, one batched pass per scale, separated pre-training targets, an overlap penalty, and
every product (evaluation, pictures, predict, export, the training command) handles them."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from inference_fixtures import CLASS_NAMES, tiny_config, write_images
from racnn.config import ConfigError, ModelConfig, load_config
from racnn.inference.api import Predictor
from racnn.modeling.crop import attention_crop, boxes_to_xyxy, compose_boxes
from racnn.modeling.losses import apn_pretrain_loss, apn_targets, region_targets
from racnn.modeling.model import RACNN
from racnn.modeling.regions import as_regions, initial_centres, overlap_penalty, pairwise_iou, pool_regions
from racnn.pictures.region_pictures import REGION_COLORS, region_panels
from racnn.training.box_scores import xyxy_iou as _iou

pytestmark = pytest.mark.usefixtures("one_thread")

# A reduced two-region run of the two-details set: the synthetic_tiny recipe at 32 px, one epoch per phase.
TWO_REGION_RUN = ["model.regions=2", "data.options.two_details=true", "model.input_size=32", "model.zoom_size=32",
                  "model.apn_pool=2", "model.apn_hidden=16", "data.synthetic_train=24", "data.synthetic_test=8",
                  "data.batch_size=8", "train.rounds=1", "train.warmup.epochs=1", "train.apn_pretrain.epochs=1",
                  "train.cls.epochs=1", "train.apn.epochs=1", "train.fusion.epochs=1"]  # fmt: skip


def _model(regions: int = 1, pool: str = "mean", scales: int = 3, seed: int = 0, **kw) -> RACNN:
    torch.manual_seed(seed)
    return RACNN("tiny", 5, scales, 48, 32, min_side=0.3, apn_pool=2, apn_hidden=16, regions=regions,
                 region_pool=pool, **kw)  # fmt: skip


def _images(batch: int = 2, side: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _one_region_forward(model: RACNN, images: torch.Tensor) -> list[torch.Tensor]:
    """RA-CNN as published, written out: the reference the default model must match bit for bit."""
    crops, boxes, composed, logits = [images], [], [], []
    for s in range(model.num_scales):
        feature_map = model.backbones[s](crops[s])
        logits.append(model.classifiers[s](feature_map.mean(dim=(2, 3))))
        if s + 1 < model.num_scales:
            boxes.append(model.apns[s](feature_map))
            composed.append(compose_boxes(boxes, images.shape[-2:])[-1])
            crops.append(attention_crop(images, composed[-1], model.zoom_size, k=model.mask_k))
    return logits + composed + crops


@pytest.mark.parametrize("scales", [2, 3])
def test_one_region_is_todays_model_bit_for_bit(scales):
    plain, explicit = _model(scales=scales), _model(1, "concat", scales=scales)  # the pool is unused with one region
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [
        (k, v.shape) for k, v in explicit.state_dict().items()
    ]
    pairs = zip(plain.state_dict().values(), explicit.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    plain.eval()
    images = _images()
    with torch.no_grad():
        out = plain(images)
        reference = _one_region_forward(plain, images)
    got = out.logits + out.boxes_in_image + out.crops
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, reference, strict=True))
    assert all(b.shape == (2, 3) for b in out.boxes) and out.features[1].shape == (2, 128)


def test_a_config_without_the_region_keys_builds_the_same_model():
    """Checkpoints written before model.regions existed hold configs without it: they load into the same model."""
    cfg = ModelConfig(num_classes=5, input_size=48, zoom_size=32, apn_pool=2, apn_hidden=16)
    old = type("OldModelConfig", (), {k: v for k, v in vars(cfg).items() if not k.startswith("region")})()
    torch.manual_seed(0)
    rebuilt, current = RACNN.from_config(old), RACNN.from_config(cfg)
    assert rebuilt.regions == 1
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in current.state_dict().items()
    }
    current.load_state_dict(rebuilt.state_dict(), strict=True)


@pytest.mark.parametrize("regions", [2, 3])
def test_k_regions_shapes_valid_boxes_and_gradients(regions):
    model = _model(regions)
    images = _images(batch=4)
    out = model(images)
    b, z = 4, model.zoom_size
    for boxes in [*out.boxes, *out.boxes_in_image]:
        assert boxes.shape == (b, regions, 3)
        xyxy = boxes_to_xyxy(boxes.reshape(-1, 3))
        assert (xyxy >= -1e-6).all() and (xyxy <= 1 + 1e-6).all()  # every box inside its image
    assert (2 * out.boxes[0][..., 2] >= 0.3 - 1e-6).all()  # the side floor holds for every region
    assert [tuple(c.shape) for c in out.crops] == [(b, 3, 48, 48), (b, regions, 3, z, z), (b, regions, 3, z, z)]
    assert out.feature_maps[1].shape[:2] == (b, regions)
    assert all(f.shape == (b, 128) for f in out.features) and all(z.shape == (b, 5) for z in out.logits)
    # Each region's finer box lies inside its own scale-2 region.
    outer, inner = (
        boxes_to_xyxy(out.boxes_in_image[0].reshape(-1, 3)),
        boxes_to_xyxy(out.boxes_in_image[1].reshape(-1, 3)),
    )
    assert (inner[:, :2] >= outer[:, :2] - 1e-5).all() and (inner[:, 2:] <= outer[:, 2:] + 1e-5).all()
    # The fresh APN starts its regions on different spots (large boxes still overlap; the penalty takes it on).
    centres = out.boxes[0][..., :2]  # (B, K, 2)
    assert (centres[:, :, None] - centres[:, None]).norm(dim=-1).add(torch.eye(regions)).min() > 0.05
    loss = sum(z.logsumexp(-1).sum() for z in [*out.logits, *out.fused.values()])
    loss.backward()
    grad = model.apns[0].fc2.weight.grad.view(regions, 3, -1)
    assert torch.isfinite(grad).all() and (grad.abs().sum(dim=(1, 2)) > 0).all()  # every region's box learns
    assert model.apns[1].fc2.weight.grad.abs().sum() > 0 and model.apns[1].fc2.out_features == 3


def test_regions_run_as_one_batch_per_scale_and_with_a_source():
    model = _model(3).eval()
    batches = []
    for backbone in model.backbones:
        backbone.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    with torch.no_grad():
        out = model(_images(batch=2), _images(batch=2, side=96, seed=3))
    assert batches == [2, 6, 6]  # one backbone pass per scale, B * K images: no loop over regions
    assert out.crops[1].shape == (2, 3, 3, 32, 32)


def test_region_pooling_mean_max_concat():
    rows = torch.arange(12.0).view(4, 3)  # 2 images x 2 regions, image-major
    assert torch.equal(pool_regions(rows, 2, "mean"), torch.tensor([[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]))
    assert torch.equal(pool_regions(rows, 2, "max"), rows.view(2, 2, 3)[:, 1])
    assert torch.equal(pool_regions(rows, 2, "concat"), rows.view(2, 6))
    assert pool_regions(rows, 1, "concat") is rows
    concat = _model(2, "concat")
    assert concat.classifiers[0].in_features == 128 and concat.classifiers[1].in_features == 256
    assert concat.fusion["1+2+3"].in_features == 128 + 2 * 256
    out = concat(_images())
    concat.init_fusion_from_classifiers(out.features)  # the widths differ per scale
    with torch.no_grad():
        fused = concat(_images()).fused["1+2+3"]
    assert torch.isfinite(fused).all()


def test_pairwise_iou_and_overlap_penalty():
    boxes = torch.tensor([[[0.3, 0.3, 0.2], [0.7, 0.7, 0.2], [0.4, 0.35, 0.25]]])  # (1, 3, 3)
    iou = pairwise_iou(boxes)
    xyxy = boxes_to_xyxy(boxes[0])
    for i in range(3):
        for j in range(3):
            assert iou[0, i, j] == pytest.approx(_iou(xyxy[i : i + 1], xyxy[j : j + 1]).item(), abs=1e-6)
    assert overlap_penalty(boxes[:, :2]) == 0  # disjoint
    assert overlap_penalty(boxes[:, [0, 0]]).item() == pytest.approx(1.0)
    moving = torch.tensor([[[0.4, 0.4, 0.2], [0.6, 0.6, 0.2]]], requires_grad=True)
    overlap_penalty(moving).backward()
    assert moving.grad[0, 0, 0] > 0 and moving.grad[0, 1, 0] < 0  # descending the penalty moves them apart
    with pytest.raises(ValueError, match="at least 2 regions"):
        overlap_penalty(boxes[:, :1])
    assert len(set(initial_centres(3))) == 3


def test_region_targets_are_the_strongest_disjoint_windows_and_matching_ignores_order():
    feature_map = torch.zeros(1, 4, 12, 12)
    feature_map[0, :, 1:3, 8:10] = 2.0  # the strongest spot, upper right
    feature_map[0, :, 8:10, 2:4] = 1.0  # a weaker one, lower left
    targets = region_targets(feature_map, 2, side=0.25)  # (1, 2, 3), strongest first
    assert targets.shape == (1, 2, 3)
    assert targets[0, 0, :2].tolist() == pytest.approx([9 / 12, 2 / 12], abs=1e-6)
    assert targets[0, 1, :2].tolist() == pytest.approx([3 / 12, 9 / 12], abs=1e-6)
    assert torch.equal(region_targets(feature_map, 1, side=0.25)[:, 0], apn_targets(feature_map, side=0.25))
    three = region_targets(feature_map, 3, side=0.25)[0]
    assert pairwise_iou(three[None])[0].triu(1).max() == 0  # disjoint windows while the map has room
    assert apn_pretrain_loss(targets.flip(1), targets)["apn_pre"] == 0  # either order is a perfect answer
    swapped = apn_pretrain_loss(targets.flip(1) + 0.01, targets)["apn_pre"]
    assert swapped == pytest.approx(apn_pretrain_loss(targets + 0.01, targets)["apn_pre"].item())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_with_two_regions(tmp_path, fmt):
    from racnn.inference.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript, write_sidecar

    model = _model(2).eval()
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        path = export_onnx(model, tmp_path / "m.onnx", 48)
        parity = verify_onnx(model, path, 48)
    else:
        path = export_torchscript(model, tmp_path / "m.pt", 48)
        parity = verify_torchscript(model, path, 48)
    assert parity.ok, parity.failures()
    assert [o.name for o in parity.outputs][-2:] == ["boxes[scale 2]", "boxes[scale 3]"]
    sidecar = write_sidecar(path, format=fmt, class_names=list("abcde"), input_size=48, mean=[0] * 3, std=[1] * 3,
                            num_scales=3, regions=2)  # fmt: skip
    meta = json.loads(sidecar.read_text())
    assert meta["regions"] == 2 and meta["output_shapes"]["boxes"] == [2, "batch", 2, 3]


def test_config_keys_and_their_checks():
    cfg = load_config("synthetic_tiny", ["model.regions=3", "model.region_pool=max", "train.region_overlap=0.5"])
    assert (cfg.model.regions, cfg.model.region_pool, cfg.train.region_overlap) == (3, "max", 0.5)
    defaults = load_config("synthetic_tiny")
    assert (defaults.model.regions, defaults.model.region_pool) == (1, "mean")
    with pytest.raises(ConfigError, match="model.regions must be between 1 and 8"):
        load_config(None, ["model.regions=0"])
    with pytest.raises(ConfigError, match="model.region_pool must be mean, max or concat"):
        load_config(None, ["model.region_pool=sum"])


def test_predictor_reports_and_draws_every_region(tmp_path):
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, regions=2))
    torch.manual_seed(0)
    predictor = Predictor(RACNN.from_config(cfg.model), cfg, CLASS_NAMES, amp="none")
    paths = write_images(tmp_path)
    [wide] = predictor.predict(paths["wide.png"], topk=2, return_crops=True)
    assert wide.regions == 2 and len(wide.region_boxes) == 2 and all(len(s) == 2 for s in wide.region_boxes)
    assert wide.boxes == [scale[0] for scale in wide.region_boxes]  # region 1 where one box is expected
    assert [len(s) for s in wide.region_crops] == [2, 2] and wide.crops[0] is wide.region_crops[0][0]
    record = json.loads(json.dumps(wide.to_dict()))
    assert record["regions"] == 2 and len(record["region_boxes"]["3"]) == 2
    for x1, y1, x2, y2 in (b for s in wide.region_boxes for b in s):
        assert -1e-3 <= x1 < x2 <= 80 + 1e-3 and -1e-3 <= y1 < y2 <= 60 + 1e-3
    picture = np.asarray(predictor.draw(Image.open(paths["wide.png"]), wide)).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(picture, axis=0)}
    assert REGION_COLORS[0] in colours and REGION_COLORS[1] in colours
    if importlib.util.find_spec("starlette") is not None:  # the web app shows region 1 and keeps every box
        from racnn.app.server import prediction_record

        shown = prediction_record(wide, crops=True)
        assert list(shown["crops"]) == ["2", "3"] and shown["region_boxes"] == record["region_boxes"]
    # One region: no region fields, and the JSON has exactly the old keys.
    one = Predictor(RACNN.from_config(tiny_config().model), tiny_config(), CLASS_NAMES, amp="none")
    [plain] = one.predict(paths["wide.png"])
    assert plain.region_boxes is None and "regions" not in plain.to_dict()


def test_region_panels_layout():
    boxes = [[(0, 0, 1, 1), (2, 2, 3, 3)], [(0, 0, 0.5, 0.5), (2, 2, 2.5, 2.5)]]
    panels = region_panels(boxes, [["a", "b"], ["c", "d"]], ["scale 2: x", "scale 3: y"], [(9, 9, 9), (8, 8, 8)])
    assert panels.crops == ["a", "b", "c", "d"] and panels.legend == ["region 1", "region 2"]
    assert panels.colors == [REGION_COLORS[0], REGION_COLORS[1]] * 2
    assert panels.captions == ["scale 2: x", "scale 2, region 2", "scale 3: y", "scale 3, region 2"]
    one = region_panels([[(0, 0, 1, 1)], [(0, 0, 1, 1)]], None, ["s2", "s3"], [(9, 9, 9), (8, 8, 8)])
    assert one.colors == [(9, 9, 9), (8, 8, 8)] and one.legend is None and one.crops == []
    assert as_regions(torch.zeros(4, 3)).shape == (4, 1, 3)


def test_evaluate_reports_how_much_the_regions_overlap():
    """``region_iou_s<s>``: the mean pairwise IoU of scale s's regions over every image, across uneven batches."""
    from torch.utils.data import TensorDataset

    from racnn.training import evaluate, make_eval_loader

    model = _model(regions=3).eval()
    images = _images(7)
    metrics = evaluate(model, make_eval_loader(TensorDataset(images, torch.arange(7) % 5), 4))  # 4 + 3 images
    with torch.no_grad():
        out = model(images)
    for s, boxes in enumerate(out.boxes_in_image):
        assert metrics[f"region_iou_s{s + 2}"] == pytest.approx(overlap_penalty(boxes).item(), rel=1e-5)
    one = evaluate(_model().eval(), make_eval_loader(TensorDataset(images, torch.arange(7) % 5), 4))
    assert not any(key.startswith("region_iou") for key in one)  # one region: nothing to overlap


def test_train_two_details_with_two_regions_then_eval_and_predict(tmp_path, capsys):
    from racnn.cli import main
    from racnn.config import RECIPES

    settings = TWO_REGION_RUN
    args = ["train", "--config", str(RECIPES / "synthetic_tiny.yaml"), "--output-dir", str(tmp_path)]
    assert main([*args, *(a for s in settings for a in ("--set", s))]) == 0
    run = tmp_path / "synthetic_tiny"
    err = capsys.readouterr().err
    assert "apn_pre1" in err and " overlap " in err  # the region terms are in the log
    for name in ("model.safetensors", "README.md", "attention_round1.png", "attention_final.png", "confusion.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("box_side_s2_r1", "box_side_s2_r2", "box_iou_s3_r2", "top1_fused"):
        assert key in metrics, key
    assert "box_side_s2" not in metrics
    for s in (2, 3):  # the regions' mutual IoU, a mean of IoUs: in [0, 1]
        assert 0.0 <= metrics[f"region_iou_s{s}"] <= 1.0
    assert "tail" in next(iter(metrics["per_class_top1"]))
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "box s2 r2" in printed and "regions' mutual IoU: s2 " in printed
    image = tmp_path / "one.png"
    from torchvision.utils import save_image

    from racnn.data import SyntheticFineGrained

    save_image(SyntheticFineGrained(1, 12, 32, two_details=True).render(0), image)
    viz = tmp_path / "viz"
    assert main(["predict", "--checkpoint", str(run), str(image), "--json", "--save-viz", str(viz)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["regions"] == 2 and len(record["region_boxes"]["2"]) == 2
    assert (viz / "one.png").stat().st_size > 1000


def test_ranking_loss_with_regions_reads_the_pooled_scale():
    """The APN phase's losses with K regions: the ranking terms plus ``overlap``, all reaching the first APN."""
    from racnn.config import TrainConfig
    from racnn.training.loop import StepContext
    from racnn.training.steps import train_apn_epoch

    model = _model(2)
    images, targets = _images(batch=4), torch.tensor([0, 1, 2, 3])
    loader = [(images, targets)]
    before = model.apns[0].fc2.bias.detach().clone()
    optimizer = torch.optim.SGD(model.apns.parameters(), lr=0.1)
    settings = replace(TrainConfig(), amp="none", channels_last=False, region_overlap=1.0)
    stats = train_apn_epoch(model, loader, optimizer, None, StepContext(train=settings))
    assert {"rank1", "rank2", "overlap"} <= set(stats)
    assert not torch.equal(before, model.apns[0].fc2.bias)
    assert 0 < stats["overlap"] < 1  # weight 1 times a mean IoU of regions that start apart but not disjoint


def test_resume_with_two_regions_gives_identical_weights(tmp_path, monkeypatch):
    """Interrupted after APN pre-training and resumed, a two-region run ends with the weights of a straight run."""
    from racnn import training
    from racnn.checkpoint import load_checkpoint
    from racnn.config import RECIPES
    from racnn.training import run as training_run

    settings = [*TWO_REGION_RUN, "train.visualize=false", "train.keep_checkpoints=true"]  # last.pt compared at the end

    def config(folder: str):
        return load_config(RECIPES / "synthetic_tiny.yaml", [*settings, f"train.output_dir={tmp_path / folder}"])

    straight = training.fit(config("a"))
    real = training_run._Run._end_epoch

    def end_epoch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state["global_epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_run._Run, "_end_epoch", end_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.fit(config("b"))
    monkeypatch.undo()
    run = tmp_path / "b" / "synthetic_tiny"
    resumed = training.fit(config("b"), resume=run)
    a, b = (load_checkpoint(r / "last.pt")["model"] for r in (straight.run_dir, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == straight.metrics and "box_iou_s2_r2" in resumed.metrics
