"""The precision rule (racnn.precision) with the device's bf16 support faked both ways, and that every inference
path follows it: float32 where bf16 is slow (the same outputs as amp=none), bf16 weights where it is fast."""

from __future__ import annotations

import json

import pytest
import torch

from inference_fixtures import CLASS_NAMES, make_checkpoint, write_images
from racnn.cli import main
from racnn.config import ConfigError
from racnn.inference.api import load
from racnn.precision import choose_precision, fast_bf16, resolve_amp

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with oneDNN bf16 kernels (the real ones run: they only are slow where the CPU lacks them)."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)


@pytest.fixture
def fake_gpu(monkeypatch):
    def with_bf16(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    return with_bf16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    images = write_images(root / "images")
    return {**images, "checkpoint": make_checkpoint(root / "tiny.pt", list(images.values()))}


def test_auto_is_float32_on_a_cpu_without_bf16_kernels():
    assert not fast_bf16(CPU) and resolve_amp("auto", CPU) == "none"
    chosen = choose_precision("auto", CPU)
    assert chosen.describe() == "precision: fp32 (auto: this CPU has no oneDNN bf16 kernels), channels-last"


def test_auto_is_bf16_on_a_cpu_with_bf16_kernels(bf16_cpu):
    assert fast_bf16(CPU) and resolve_amp("auto", CPU) == "bf16"
    chosen = choose_precision("auto", CPU)
    assert chosen.dtype == torch.bfloat16
    assert chosen.describe() == "precision: bf16 (auto: this CPU has oneDNN bf16 kernels), channels-last"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_the_gpus_bf16_support(fake_gpu, supported):
    fake_gpu(supported)
    assert resolve_amp("auto", CUDA) == ("bf16" if supported else "none")
    assert choose_precision("auto", CUDA).channels_last


def test_mps_is_float32_without_channels_last(bf16_cpu):
    chosen = choose_precision("auto", MPS)
    assert chosen.amp == "none" and not chosen.channels_last and "float32 on mps" in chosen.reason


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_explicit_settings_are_kept_whatever_the_device_offers(amp, bf16_cpu, monkeypatch):
    assert resolve_amp(amp, CPU) == amp
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_amp(amp, CPU) == amp
    assert choose_precision(amp, CPU, channels_last=False).describe().endswith(f"(amp {amp} as asked)")


def test_explicit_bf16_on_a_slow_cpu_warns():
    from racnn.precision import warn_slow_bf16

    with pytest.warns(UserWarning, match="without oneDNN bf16"):
        warn_slow_bf16(CPU, "bf16")


def test_fp16_off_cuda_and_unknown_values_are_refused():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
    with pytest.raises(ConfigError, match="must be one of auto, none, bf16, fp16"):
        resolve_amp("fp8", CPU)


def _probs(predictions) -> torch.Tensor:
    return torch.tensor([[c.prob for c in p.topk] for p in predictions])


def test_api_auto_without_bf16_kernels_equals_float32(files):
    images = [files["wide.png"], files["tall.jpg"], files["square.png"]]
    auto = load(files["checkpoint"], device="cpu")
    fp32 = load(files["checkpoint"], device="cpu", amp="none")
    assert auto.precision.amp == "none" and next(auto.model.parameters()).dtype == torch.float32
    assert [p.to_dict() for p in auto.predict(images)] == [p.to_dict() for p in fp32.predict(images)]


def test_api_auto_with_bf16_kernels_casts_the_weights_and_agrees_with_float32(files, bf16_cpu):
    images = [files["wide.png"], files["tall.jpg"], files["square.png"]]
    bf16 = load(files["checkpoint"], device="cpu")
    fp32 = load(files["checkpoint"], device="cpu", amp="none")
    assert bf16.precision.amp == "bf16"
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}  # cast once, no autocast per call
    got, expected = bf16.predict(images, return_crops=True), fp32.predict(images)
    assert [p.topk[0].index for p in got] == [p.topk[0].index for p in expected]
    assert torch.allclose(_probs(got), _probs(expected), atol=0.05)
    boxes = torch.tensor([p.boxes_normalized for p in got])
    assert torch.allclose(boxes, torch.tensor([p.boxes_normalized for p in expected]), atol=0.03)
    assert got[0].crops[0].size == (48, 48)  # crops come back as pictures from bf16 tensors


def test_predict_cli_says_its_precision_once_and_matches_fp32(files, capsys):
    path = str(files["wide.png"])
    assert main(["predict", "--checkpoint", str(files["checkpoint"]), path, "--json"]) == 0
    auto, err = capsys.readouterr()
    assert err.count("precision: ") == 1 and "precision: fp32 (auto: this CPU has no oneDNN" in err
    assert main(["predict", "--checkpoint", str(files["checkpoint"]), path, "--json", "--amp", "none"]) == 0
    assert capsys.readouterr().out == auto


def test_predict_cli_amp_bf16_on_a_bf16_cpu(files, capsys, bf16_cpu):
    assert main(["predict", "--checkpoint", str(files["checkpoint"]), str(files["wide.png"]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "precision: bf16 (auto: this CPU has oneDNN bf16 kernels), channels-last" in err
    assert json.loads(out)["prediction"]["name"] in CLASS_NAMES


def test_predict_cli_refuses_fp16_on_the_cpu_in_one_line(files, capsys):
    code = main(["predict", "--checkpoint", str(files["checkpoint"]), str(files["wide.png"]), "--amp", "fp16"])
    err = capsys.readouterr().err
    assert code == 2 and "fp16 needs a CUDA device" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["predict", "eval", "export", "demo", "app", "train"])
def test_every_command_takes_amp(command):
    from racnn.cli import get_args_parser

    required = {"predict": ["--checkpoint", "x", "img"], "eval": ["--checkpoint", "x"], "app": ["--checkpoint", "x"]}
    required["export"] = ["--checkpoint", "x", "--format", "onnx", "--out", "y"]
    parser = get_args_parser()
    args = parser.parse_args([command, *required.get(command, [])])
    # train keeps the config's train.amp (auto in every recipe); eval lets --set train.amp=... speak, else auto
    assert args.amp == {"train": None, "eval": None}.get(command, "auto")
    assert parser.parse_args([command, *required.get(command, []), "--amp", "bf16"]).amp == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required.get(command, []), "--amp", "fp8"])
