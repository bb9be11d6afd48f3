"""`racnn train` and `racnn eval`: help, user mistakes (exit 2, one message, no traceback), NaN, Ctrl-C, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

import racnn.training.run as training_run
import racnn.training.steps as training_steps
from racnn.cli import main
from racnn.config import RECIPES

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(RECIPES / "synthetic_tiny.yaml")
TINY = [
    "model.input_size=32",
    "model.zoom_size=32",
    "model.apn_pool=2",
    "model.apn_hidden=16",
    "data.synthetic_train=32",
    "data.synthetic_test=15",
    "data.synthetic_classes=4",
    "data.batch_size=8",
    "train.rounds=1",
    "train.warmup.epochs=1",
    "train.apn_pretrain.epochs=1",
    "train.cls.epochs=1",
    "train.apn.epochs=1",
    "train.fusion.epochs=1",
    "train.visualize=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp_path: Path, *extra: str) -> list[str]:
    args = ["train", "--config", CONFIG, "--output-dir", str(tmp_path)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("train", ["--config", "--set", "--resume", "--output-dir", "--baseline", "--print-config", "--device"]),
        ("eval", ["--checkpoint", "--set", "--split", "--out", "--head", "--device", "--batch-size", "--workers"]),
    ],
)
def test_help_explains_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text
    assert "examples:" in text and "exit codes" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "--config", CONFIG, "--set", "train.marign=0.1"], "did you mean 'train.margin'"),
        (["train", "--config", CONFIG, "--set", "model.backbone=vgg20"], "unknown backbone 'vgg20'"),
        (
            ["train", "--config", CONFIG, "--set", "data.dataset=cub", "--set", "data.root=/nonexistent"],
            "unknown option(s) ['cache'] for data set 'cub'",
        ),  # the synthetic recipe's option
        (
            [
                "train",
                "--config",
                CONFIG,
                "--set",
                "data.dataset=cub",
                "--set",
                "data.root=/nonexistent",
                "--set",
                "data.options={}",
            ],
            "the cub layout under /nonexistent is incomplete",
        ),
        (["train", "--resume", "/nonexistent/run"], "checkpoint not found"),
        (["train"], "give a config file (--config FILE) or a run to resume"),
        (["eval", "--checkpoint", "/nonexistent/best.pt"], "checkpoint not found"),
    ],
)
def test_user_mistakes_exit_2_with_one_message(args, message, capsys, tmp_path):
    args = [*args, "--set", f"train.output_dir={tmp_path}"] if args[0] == "train" and "--resume" not in args else args
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith(("racnn train: error:", "racnn eval: error:"))


def test_train_then_eval_prints_every_scale_and_writes_the_confusion_matrix(tmp_path, capsys):
    assert main(_train(tmp_path)) == 0
    checkpoint = tmp_path / "synthetic_tiny" / "model.safetensors"
    err = capsys.readouterr().err  # the run's log: one line per epoch, with where the whole run stands
    assert "[warmup e1]" in err and "| epoch 1/5 of the run, ~" in err and " left\n" in err
    assert "[fusion e1]" in err and "| epoch 5/5 of the run, testing next" in err
    args = ["--out", str(tmp_path / "ev"), "--head", "s2", "--device", "cpu", "-b", "4", "-j", "0"]
    assert main(["eval", "--checkpoint", str(checkpoint), *args]) == 0
    out = capsys.readouterr().out
    for row in ("scale 1", "scale 2", "scale 3", "1+2 ", "1+2+3", "mean prob.", "box s2", "box s3", "15 images"):
        assert row in out, row
    assert (tmp_path / "ev" / "confusion.csv").read_text().startswith("true \\ predicted,red-cyan horizontal")
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 1000
    assert '"confusion_head": "s2"' in (tmp_path / "ev" / "metrics.json").read_text()
    # default output folder: next to the checkpoint
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 0
    assert (checkpoint.parent / "eval" / "metrics.json").is_file()


def test_nan_loss_stops_the_run_naming_phase_epoch_and_step(tmp_path, monkeypatch, capsys):
    real = training_steps.ranking_losses

    def poisoned(logits, target, margin=0.05, coarser_fixed=False):
        return {name: value * float("inf") for name, value in real(logits, target, margin, coarser_fixed).items()}

    monkeypatch.setattr(training_steps, "ranking_losses", poisoned)
    assert main([*_train(tmp_path), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "optimiser steps per epoch; phases: warmup -> apn_pretrain -> cls -> apn -> fusion" in err  # a debug line
    assert "training stopped: non-finite loss in phase 4/5 'apn' (round 1), epoch 1/1, step 1/" in err


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    real = training_run._Run._end_epoch

    def end_epoch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run._Run, "_end_epoch", end_epoch)
    assert main(_train(tmp_path)) == 130
    run = tmp_path / "synthetic_tiny"
    assert f"racnn train --resume {run}" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no log lines, no progress bar


def test_baseline_prints_its_accuracy(tmp_path, capsys):
    assert main([*_train(tmp_path), "--baseline"]) == 0
    out = capsys.readouterr().out
    assert '"top1"' in out and '"epochs": 2' in out and '"n_images": 15' in out
