"""A run folder as a finished run leaves it: run.json, train.log, the model card, model.safetensors alone (or with
best.pt / last.pt on request), TensorBoard images and hyper-parameters; resume of a finished run or of a last.pt
that is not the folder's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import racnn.training.run as training_run
from racnn.checkpoint import load_checkpoint
from racnn.cli import main
from racnn.config import RECIPES, load_config
from racnn.training import fit
from racnn.training.run_record import RunFinishedError
from racnn.training.time_left import TimeLeft

TINY = [
    "model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16",
    "data.synthetic_train=16", "data.synthetic_test=8", "data.synthetic_classes=4", "data.batch_size=8",
    "data.num_workers=0", "train.rounds=0", "train.warmup.epochs=1", "train.apn_pretrain.epochs=0",
    "train.fusion.epochs=1", "train.progress=false", "train.tensorboard=true", "train.eval_interval=-1",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out: Path, *extra: str) -> list[str]:
    args = ["train", "--config", str(RECIPES / "synthetic_tiny.yaml"), "--output-dir", str(out)]
    for item in TINY:
        args += ["--set", item]
    return [*args, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A finished tiny run with the defaults (no checkpoints kept), and what it printed."""
    root = tmp_path_factory.mktemp("run_folder")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train(root)) == 0
    finally:
        torch.set_num_threads(threads)
    return {"dir": root / "synthetic_tiny"}


def test_run_json_records_command_versions_machine_and_splits(run):
    record = json.loads((run["dir"] / "run.json").read_text())
    assert len(record["run_id"]) == 32 and record["finished"] and record["resumed"] == []
    assert record["command"].startswith(f"racnn train --config {RECIPES / 'synthetic_tiny.yaml'} --output-dir ")
    assert set(record["versions"]) == {"python", "racnn", "torch", "torchvision", "timm", "numpy"}
    assert record["machine"]["cpu"] and record["machine"]["cpu_cores"] >= 1 and record["machine"]["device"] == "cpu"
    assert record["splits"] == {"train": 16, "val": 2, "test": 8}  # the synthetic set's val: 1 image a class
    assert record["git"] is None or len(record["git"]["commit"]) == 40
    assert record["results"]["fused"] == json.loads((run["dir"] / "metrics.json").read_text())["top1_fused"]


def test_train_log_holds_what_the_terminal_showed(run):
    log = (run["dir"] / "train.log").read_text()
    for line in ("run folder: ", "data: synthetic, 4 classes; images: train 16, val 2, test 8", "versions: python ",
                 "[warmup e1]", "[fusion e1]", "test top-1 (the model of epoch 2", "done in "):  # fmt: skip
        assert line in log, line


def test_the_folder_keeps_the_weights_once_and_a_model_card(run):
    names = {p.name for p in run["dir"].iterdir()}
    assert "best.pt" not in names and "last.pt" not in names
    assert {"model.safetensors", "README.md", "attention_final.png", "curves.png", "metrics.json"} <= names
    from safetensors import safe_open

    with safe_open(str(run["dir"] / "model.safetensors"), "pt") as f:
        assert f.metadata()["run_id"] == json.loads((run["dir"] / "run.json").read_text())["run_id"]
    card = (run["dir"] / "README.md").read_text()
    fused = json.loads((run["dir"] / "metrics.json").read_text())["top1_fused"]
    assert f"| **fused** (all scales; the answer) | {100 * fused:.2f} |" in card
    assert "![attention_final](attention_final.png)" in card and "racnn predict --checkpoint" in card
    # the folder is what racnn.load, eval and predict take
    from racnn import load

    assert load(run["dir"], device="cpu").source == str(run["dir"] / "model.safetensors")


def test_resuming_a_finished_run_says_so_in_one_line(run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in run["dir"].iterdir()}
    assert main(["train", "--resume", str(run["dir"])]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "the run finished at " in out and "nothing to resume" in out and err == ""
    assert {p.name: p.stat().st_mtime_ns for p in run["dir"].iterdir()} == before
    with pytest.raises(RunFinishedError, match="nothing to resume"):
        fit(load_config(str(run["dir"] / "config.yaml")), resume=run["dir"])


def test_tensorboard_gets_the_attention_pictures_and_the_hyper_parameters(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run["dir"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "attention/attention_final" in events.Tags()["images"]
    assert "train_loss" in events.Tags()["scalars"]
    assert events.PluginTagToContent("hparams")  # the config against the test metrics


def test_keep_checkpoints_keeps_best_and_last_and_a_resume_of_it_is_finished(tmp_path, capsys):
    assert main(_train(tmp_path, "--keep-checkpoints", "--set", "train.visualize=false")) == 0
    folder = tmp_path / "synthetic_tiny"
    assert (folder / "best.pt").is_file() and (folder / "last.pt").is_file()
    run_id = json.loads((folder / "run.json").read_text())["run_id"]
    assert load_checkpoint(folder / "last.pt")["run_id"] == run_id == load_checkpoint(folder / "best.pt")["run_id"]
    capsys.readouterr()
    assert main(["train", "--resume", str(folder / "last.pt")]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_resume_checks_that_last_pt_is_the_runs_then_finishes_it(tmp_path, monkeypatch, capsys):
    real = training_run._Run._end_epoch

    def stop_after_one_epoch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run._Run, "_end_epoch", stop_after_one_epoch)
    quiet = ["--set", "train.visualize=false", "--set", "train.tensorboard=false"]
    assert main(_train(tmp_path / "a", *quiet)) == 130
    assert main(_train(tmp_path / "b", *quiet)) == 130
    monkeypatch.undo()
    a, b = tmp_path / "a" / "synthetic_tiny", tmp_path / "b" / "synthetic_tiny"
    assert load_checkpoint(a / "last.pt")["best_model"] is None  # the best weights are last.pt's own
    kept = a / "last.pt.mine"
    shutil.copyfile(a / "last.pt", kept)
    shutil.copyfile(b / "last.pt", a / "last.pt")  # another run's checkpoint in this folder
    capsys.readouterr()
    assert main(["train", "--resume", str(a)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "belongs to another run" in err and "Traceback" not in err
    shutil.copyfile(kept, a / "last.pt")
    kept.unlink()
    assert main(["train", "--resume", str(a)]) == 0
    record = json.loads((a / "run.json").read_text())
    assert record["finished"] and len(record["resumed"]) == 1 and not (a / "last.pt").exists()
    assert "[fusion e1]" in (a / "train.log").read_text()  # the resumed session appended to the log


def test_the_time_left_times_only_the_validation_passes_that_ran(tmp_path, monkeypatch):
    timed = []
    real = TimeLeft.evaluated

    def evaluated(self, seconds, images, startup=0.0):
        timed.append((seconds, images, startup))
        real(self, seconds, images, startup)

    monkeypatch.setattr(TimeLeft, "evaluated", evaluated)
    quiet = ["--set", "train.visualize=false", "--set", "train.tensorboard=false", "--set", "train.eval_interval=0"]
    assert main(_train(tmp_path, *quiet)) == 0
    assert len(timed) == 2 and all(seconds > 0 and images == 2 for seconds, images, _ in timed)  # each phase's end
    assert all(0 < startup <= seconds for seconds, _, startup in timed)  # the wait for the first batch, timed
    with open(tmp_path / "synthetic_tiny" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(row["time_left_s"]) > 0 for row in rows)  # the test pass is left after the last epoch
    assert float(rows[1]["elapsed_s"]) > float(rows[0]["elapsed_s"]) > 0


def test_the_time_left_counts_the_images_of_an_optimiser_step(tmp_path, monkeypatch):
    """With gradient accumulation a step holds ``batch_size * grad_accum`` images: the forward-only phases' pace per
    image, which times the evaluation, divides by that."""
    sizes = []
    real = TimeLeft.__init__

    def init(self, images_per_step):
        sizes.append(images_per_step)
        real(self, images_per_step)

    monkeypatch.setattr(TimeLeft, "__init__", init)
    quiet = ["--set", "train.visualize=false", "--set", "train.tensorboard=false"]
    assert main(_train(tmp_path, *quiet, "--set", "data.batch_size=4", "--set", "train.grad_accum=2")) == 0
    assert sizes == [8]
