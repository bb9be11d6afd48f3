"""racnn export: ONNX and TorchScript match the eager model (<= 1e-4) at a batch size other than the traced one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_fixtures import CLASS_NAMES, make_checkpoint, write_images
from racnn.checkpoint import load_model
from racnn.cli import main
from racnn.export import (
    OUTPUT_NAMES,
    ExportWrapper,
    _MatmulAdaptiveAvgPool2d,
    export_onnx,
    export_torchscript,
    verify_torchscript,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    return make_checkpoint(root / "tiny.pt", list(write_images(root / "images").values()), steps=2)


@pytest.fixture(scope="module")
def model(checkpoint):
    model, _, _ = load_model(checkpoint)
    return model


def _expected(model, images):
    with torch.no_grad():
        return [t.numpy() for t in ExportWrapper(model)(images)]


@pytest.mark.parametrize("size,out", [((8, 8), 7), ((6, 9), (4, 2)), ((7, 7), 7), ((5, 3), (None, 2))])
def test_matmul_adaptive_pool_matches_torch(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(_MatmulAdaptiveAvgPool2d(out)(x), torch.nn.AdaptiveAvgPool2d(out)(x))


def test_wrapper_outputs(model):
    probs, logits, boxes = ExportWrapper(model)(torch.randn(2, 3, 64, 64))
    assert probs.shape == (2, 4) and logits.shape == (3, 2, 4) and boxes.shape == (2, 2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_onnx_python_dynamic_batch(model, tmp_path):
    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "m.onnx", 64, batch_size=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    for batch in (1, 5):  # neither is the traced batch
        images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": images.numpy()})
        for g, e in zip(got, _expected(model, images), strict=True):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def test_torchscript_python_dynamic_batch(model, tmp_path):
    path = export_torchscript(model, tmp_path / "m.pt", 64, batch_size=2)
    assert verify_torchscript(model, path, 64, batch_size=4) <= 1e-4
    assert not model.training  # export left the model as it was
    with pytest.raises(ValueError, match="eval"):
        export_torchscript(model.train(), tmp_path / "n.pt", 64)
    model.eval()


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_cli_export_checks_parity_and_writes_a_sidecar(checkpoint, tmp_path, capsys, fmt, suffix):
    out = tmp_path / f"racnn.{suffix}"
    code = main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out), "--batch", "2"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert out.is_file() and "max abs difference" in stdout and "batch 3" in stdout
    diff = float(stdout.split("max abs difference ")[1].split()[0])
    assert diff <= 1e-4
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["class_names"] == CLASS_NAMES and meta["input_size"] == 64 and meta["format"] == fmt
    assert meta["output_names"] == ["probs", "logits", "boxes"] and len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["output_shapes"]["logits"] == [3, "batch", 4]


def test_cli_export_fails_above_tolerance(checkpoint, tmp_path, capsys):
    out = tmp_path / "racnn.pt"
    args = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]
    code = main([*args, "--tolerance", "-1"])  # any difference, even 0, is above a negative tolerance
    stdout, _ = capsys.readouterr()
    assert code == 1 and "FAILED" in stdout


def test_cli_export_bad_checkpoint(tmp_path, capsys):
    foreign = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    code = main(["export", "--checkpoint", str(foreign), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    _, stderr = capsys.readouterr()
    assert code == 2 and "not a racnn checkpoint" in stderr and len(stderr.strip().splitlines()) == 1
