"""Every artefact of a training run loads for inference: best.pt, last.pt, model.safetensors and the run folder
itself, in racnn.load and in racnn predict / eval / export; what is not one is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference_fixtures import write_images
from racnn.checkpoint import CheckpointError, find_model_file, load_model
from racnn.cli import main
from racnn.config import RECIPES
from racnn.inference.api import load

TINY = [
    "model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16",
    "data.synthetic_train=16", "data.synthetic_test=8", "data.synthetic_classes=4", "data.batch_size=8",
    "data.num_workers=0", "train.rounds=0", "train.warmup.epochs=1", "train.apn_pretrain.epochs=0",
    "train.fusion.epochs=0", "train.visualize=false", "train.progress=false", "train.tensorboard=false",
    "train.keep_checkpoints=true",  # best.pt, last.pt and model.safetensors: every artefact a run can leave
]  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:the fusion heads of this model were never trained"),  # fusion.epochs=0
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run (best.pt, last.pt, model.safetensors) and a few images; its train log."""
    root = tmp_path_factory.mktemp("artefacts")
    args = ["train", "--config", str(RECIPES / "synthetic_tiny.yaml"), "--output-dir", str(root)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for item in TINY:
            args += ["--set", item]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return {"dir": root / "synthetic_tiny", **write_images(root / "images")}


def _copy(run: dict[str, Path], tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in names:
        shutil.copyfile(run["dir"] / name, folder / name)
    return folder


def test_best_pt_model_safetensors_and_the_folder_give_the_same_model(run):
    images = [run["wide.png"], run["tall.jpg"]]
    expected = load(run["dir"] / "best.pt", device="cpu").predict(images)
    for source in (run["dir"] / "model.safetensors", run["dir"]):
        predictor = load(source, device="cpu")
        assert predictor.predict(images) == expected, source
        assert predictor.class_names[:1] == ["red-cyan horizontal"]
    assert load(run["dir"], device="cpu").source == str(run["dir"] / "best.pt")
    model, cfg, names = load_model(run["dir"] / "model.safetensors")
    assert model.trained_heads == load_model(run["dir"] / "best.pt")[0].trained_heads
    assert cfg.train.amp == "auto" and cfg.model.pretrained is None and len(names) == 4
    assert load(run["dir"] / "last.pt", device="cpu").predict(images)[0].image_size == (80, 60)


@pytest.mark.parametrize(
    ("present", "picked"),
    [(["best.pt", "model.safetensors", "last.pt"], "best.pt"), (["model.safetensors", "last.pt"],
     "model.safetensors"), (["last.pt"], "last.pt")],
)  # fmt: skip
def test_a_run_folder_gives_best_then_safetensors_then_last(run, tmp_path, present, picked):
    folder = _copy(run, tmp_path, *present)
    assert find_model_file(folder) == folder / picked
    assert load(folder, device="cpu").source == str(folder / picked)


def test_a_folder_without_a_model_and_foreign_safetensors_are_refused_in_words(run, tmp_path):
    with pytest.raises(CheckpointError, match="folder without best.pt, model.safetensors or last.pt"):
        load_model(tmp_path)
    foreign = tmp_path / "weights.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without racnn's metadata"):
        load_model(foreign)
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes((run["dir"] / "model.safetensors").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(truncated)


def test_safetensors_metadata_is_checked_like_a_checkpoints_config(run, tmp_path):
    from safetensors import safe_open

    with safe_open(str(run["dir"] / "model.safetensors"), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    config["model"]["apn_hidden"] = 10**12  # a config asking far more than its weights hold
    save_file(tensors, str(tmp_path / "big.safetensors"), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="apn_hidden"):
        load_model(tmp_path / "big.safetensors")
    names = json.dumps(["a", "b"])  # 2 names for 4 classes
    save_file(tensors, str(tmp_path / "names.safetensors"), metadata={**metadata, "class_names": names})
    with pytest.raises(CheckpointError, match="2 class names for a model with 4 classes"):
        load_model(tmp_path / "names.safetensors")


def test_predict_eval_and_export_take_a_run_folder_and_model_safetensors(run, tmp_path, capsys):
    folder = _copy(run, tmp_path, "model.safetensors", "last.pt")
    assert main(["predict", "--checkpoint", str(folder), str(run["wide.png"]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"{folder / 'model.safetensors'}: precision: fp32" in err and json.loads(out)["prediction"]["name"]
    assert main(["eval", "--checkpoint", str(folder)]) == 0
    assert (folder / "eval" / "metrics.json").is_file()  # beside the file picked, in the run folder
    assert str(folder / "model.safetensors") in capsys.readouterr().out
    out_file = tmp_path / "model.pt"
    args = ["export", "--checkpoint", str(folder / "model.safetensors"), "--format", "torchscript"]
    assert main([*args, "--out", str(out_file)]) == 0
    assert "ok" in capsys.readouterr().out and out_file.is_file()


def _eval(run, tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    assert main(["eval", "--checkpoint", str(run["dir"]), "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_eval_auto_equals_fp32_without_bf16_kernels_and_runs_bf16_with_them(run, tmp_path, capsys, monkeypatch):
    auto = _eval(run, tmp_path, "auto", "--amp", "auto")
    assert capsys.readouterr().out.count("precision: fp32 (auto: this CPU has no oneDNN bf16 kernels)") == 1
    assert _eval(run, tmp_path, "fp32", "--amp", "none") == auto
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    # the run stored train.amp auto and ran fp32 here: eval takes what its run.json records, not a new choice
    assert _eval(run, tmp_path, "recorded") == auto
    assert "run.json's record of what train.amp auto chose: none" in capsys.readouterr().out
    bf16 = _eval(run, tmp_path, "bf16", "--amp", "auto")  # asked to decide again: bf16 on this (faked) CPU
    assert "precision: bf16 (auto: this CPU has oneDNN bf16 kernels)" in capsys.readouterr().out
    assert bf16["n_images"] == auto["n_images"] == 8
    assert abs(bf16["rank_loss"] - auto["rank_loss"]) < 0.05 and abs(bf16["box_side_s2"] - auto["box_side_s2"]) < 0.03
    export = ["export", "--checkpoint", str(run["dir"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    assert main(export) == 0  # the export and its check stay float32; bf16's distance is reported beside
    out = capsys.readouterr().out
    assert "(ok, tolerance" in out and "precision: bf16 (auto" in out and "differs from the export by up to" in out
    assert "(weights cast to bf16, 8 significant bits)" in out and " in probs, on a random batch" in out


def test_training_says_its_precision_once_and_stores_auto(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    args = ["train", "--config", str(RECIPES / "synthetic_tiny.yaml"), "--output-dir", str(tmp_path)]
    for item in [*TINY, "train.warmup.epochs=0"]:
        args += ["--set", item]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        err.count("precision: ") == 1
        and "precision: bf16 (auto: this CPU has oneDNN bf16 kernels), channels-last" in err
    )
    assert load_model(tmp_path / "synthetic_tiny")[1].train.amp == "auto"  # decided again wherever it is used
    assert main([*args, "--amp", "none"]) == 0
    assert "precision: fp32 (amp none as asked), channels-last" in capsys.readouterr().err
