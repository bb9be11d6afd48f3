"""A model to share: ``racnn.save_pretrained`` writes a Hugging Face style folder that ``racnn.load`` reads back,
from the folder or as ``hf-hub:owner/name`` out of the Hugging Face cache, offline (nothing is downloaded here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import racnn
from inference_fixtures import CLASS_NAMES, make_checkpoint, write_images
from racnn.checkpoint import CheckpointError
from racnn.inference.hub import hub_folder, model_card

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hub")
    images = write_images(root / "images")
    checkpoint = make_checkpoint(root / "run" / "best.pt", list(images.values()), steps=2)
    return {"checkpoint": checkpoint, "images": [str(p) for p in images.values()], "root": root}


def _answers(predictor, images) -> list[dict]:
    """Every head's top-k classes and probabilities, and the boxes, per image."""
    return [p.to_dict() for p in predictor.predict(images)]


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder``'s files as the Hugging Face cache holds a downloaded snapshot of ``repo_id`` at ``main``."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)


def test_save_pretrained_writes_a_folder_load_reads_back_identically(files, tmp_path):
    folder = racnn.save_pretrained(files["checkpoint"], tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    original = racnn.load(files["checkpoint"], device="cpu", amp="none")
    again = racnn.load(folder, device="cpu", amp="none")
    assert again.class_names == CLASS_NAMES and again.source == str(folder / "model.safetensors")
    assert _answers(again, files["images"]) == _answers(original, files["images"])  # the same numbers, exactly
    readable = json.loads((folder / "config.json").read_text())
    assert readable["library"] == "racnn" and readable["class_names"] == CLASS_NAMES
    assert readable["config"]["model"]["backbone"] == "tiny" and readable["config"]["model"]["pretrained"] is None


def test_a_predictor_saves_its_float32_weights_even_when_it_runs_bf16(files, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # no slow-bf16 warning
    bf16 = racnn.load(files["checkpoint"], device="cpu", amp="bf16")
    folder = bf16.save_pretrained(tmp_path / "from_bf16")
    reference = racnn.load(files["checkpoint"], device="cpu", amp="none").model.state_dict()
    saved = racnn.load(folder, device="cpu", amp="none").model.state_dict()
    assert all(torch.equal(saved[k], reference[k]) and saved[k].dtype == reference[k].dtype for k in reference)
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}


def test_card_says_what_the_folder_knows_and_how_to_load_it(files, tmp_path):
    run = files["checkpoint"].parent
    (run / "metrics.json").write_text(json.dumps({"n_images": 3, "top1_s1": 0.5, "top1_fused": 0.75}))
    try:
        card = (racnn.save_pretrained(run, tmp_path / "card") / "README.md").read_text()
    finally:
        (run / "metrics.json").unlink()
    assert card.startswith("---\nlibrary_name: racnn\npipeline_tag: image-classification\n")
    assert "# RA-CNN (tiny, 3 scales) on synthetic" in card and "4 classes: sparrow, warbler, wren, finch" in card
    assert "Test top-1 (3 images): s1 50.00 %, fused 75.00 %" in card
    assert 'racnn.load("hf-hub:OWNER/NAME")' in card


def test_the_card_writer_is_replaceable(files, tmp_path):
    from racnn.checkpoint import load_model
    from racnn.inference.hub import write_pretrained

    model, cfg, names = load_model(files["checkpoint"])
    folder = write_pretrained(model, tmp_path / "own", cfg, names, card=lambda *args: "my card\n")
    assert (folder / "README.md").read_text() == "my card\n"
    assert model_card(cfg, names).count("\n## Use\n") == 1


def test_load_hf_hub_name_offline_from_the_cache(files, tmp_path):
    """In a fresh process with HF_HUB_OFFLINE=1, as a user without network would run it."""
    folder = racnn.save_pretrained(files["checkpoint"], tmp_path / "shared")
    _hub_cache(tmp_path / "hf", "birds/racnn-tiny", folder)
    code = (
        "import json, sys, racnn\n"
        "p = racnn.load('hf-hub:birds/racnn-tiny', device='cpu', amp='none')\n"
        "print(json.dumps({'source': p.source, 'answers': [x.to_dict() for x in p.predict(sys.argv[1:])]}))\n"
    )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO / "tests"),
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, *files["images"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    snapshot = tmp_path / "hf" / "models--birds--racnn-tiny" / "snapshots" / COMMIT
    assert result["source"] == str(snapshot / "model.safetensors")
    expected = _answers(racnn.load(files["checkpoint"], device="cpu", amp="none"), files["images"])
    assert result["answers"] == json.loads(json.dumps(expected))  # through JSON, as the other process printed them


def test_hub_name_not_in_the_cache_offline_says_so(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache"):
        hub_folder("hf-hub:birds/absent", cache_dir=tmp_path)


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:no-owner", "hf-hub:a/b/c", "hf-hub:../x"])
def test_malformed_hub_names_are_refused(name):
    with pytest.raises(CheckpointError, match="expected hf-hub:owner/name"):
        hub_folder(name)


def test_a_cached_repository_without_weights_is_not_taken_for_a_model(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("not a model\n")
    _hub_cache(tmp_path / "hf", "birds/readme-only", other)
    with pytest.raises(CheckpointError, match="no model.safetensors; is it a racnn model"):
        hub_folder("hf-hub:birds/readme-only", cache_dir=tmp_path / "hf")


def test_commands_take_a_hub_name(files, tmp_path, monkeypatch, capsys):
    """``racnn predict`` and ``racnn export`` read ``hf-hub:owner/name`` from the cache like a local checkpoint."""
    import huggingface_hub

    from racnn.cli import main

    _hub_cache(tmp_path / "hf", "birds/racnn-tiny", racnn.save_pretrained(files["checkpoint"], tmp_path / "shared"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub, image = "hf-hub:birds/racnn-tiny", files["images"][0]
    assert main(["predict", "--checkpoint", hub, image, "--json", "--amp", "none"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main(["predict", "--checkpoint", str(files["checkpoint"]), image, "--json", "--amp", "none"]) == 0
    assert answer == json.loads(capsys.readouterr().out.splitlines()[0])  # every number the same
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", hub, "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and "(ok, tolerance" in capsys.readouterr().out
