"""What a run folder records without training: the time left's arithmetic, run.json's parts, the identity check
on resume, the finished mark and the model card (tests/test_run_folder.py trains and checks the folder whole)."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

import racnn
from racnn.config import ConfigError, config_to_dict, load_config
from racnn.training.model_card import model_card, results_table
from racnn.training.run_record import (
    RunLog,
    check_identity,
    command_line,
    finished_note,
    git_commit,
    machine,
    versions,
    write_record,
)
from racnn.training.time_left import EVAL_COST, RELATIVE_COST, TimedPass, TimeLeft, remaining, validates

# -- the time left -----------------------------------------------------------------------------------------


def test_validates_follows_the_eval_interval():
    # eval_interval=1: every epoch; 0: each phase's end; -1: the run's end only; 2: every second epoch and ends
    assert [validates(e, 3, False, 1) for e in (1, 2, 3)] == [True, True, True]
    assert [validates(e, 3, False, 0) for e in (1, 2, 3)] == [False, False, True]
    assert [validates(e, 3, False, -1) for e in (1, 2, 3)] == [False, False, False]
    assert [validates(e, 3, True, -1) for e in (1, 2, 3)] == [False, False, True]
    assert [validates(e, 5, False, 2) for e in range(1, 6)] == [False, True, False, True, True]


def test_remaining_lists_the_epochs_and_validations_to_come():
    phases = [("warmup", 2), ("apn_pretrain", 1), ("cls", 3), ("fusion", 2)]
    assert remaining(phases, 0, 1, 0) == ([("warmup", 1), ("apn_pretrain", 1), ("cls", 3), ("fusion", 2)], 4)
    assert remaining(phases, 2, 3, -1) == ([("fusion", 2)], 1)  # only the run's last epoch is validated
    assert remaining(phases, 3, 2, 1) == ([], 0)  # done: the test pass is all that is left


def test_time_left_counts_each_kind_at_its_pace_and_every_evaluation():
    pace = TimeLeft(images_per_step=10)
    assert pace.estimate([("cls", 5)], 0) is None  # nothing measured yet
    pace.trained("cls", seconds=20.0, steps=10)  # 2 s a step
    pace.trained("fusion", seconds=4.0, steps=10)  # 0.4 s a step
    pace.evaluated(seconds=3.0, images=100)  # 0.03 s an image
    # an evaluated image: the passes' 100 images and the fusion phase's 100 (a forward pass each), pooled
    assert pace.image_seconds() == pytest.approx((3.0 + 4.0) / 200)
    assert pace.estimate([("cls", 5), ("fusion", 10)], 200) == pytest.approx(5 * 2 + 10 * 0.4 + 200 * 0.035)


def test_a_forward_only_phase_times_the_evaluation_before_any_pass():
    pace = TimeLeft(images_per_step=16)
    pace.trained("warmup", seconds=100.0, steps=10)
    assert pace.image_seconds() == pytest.approx(10.0 / 16 * EVAL_COST)  # from the classification pace
    pace.trained("apn_pretrain", seconds=12.0, steps=10)  # 160 images, all scales forward
    assert pace.image_seconds() == pytest.approx(12.0 / 160)


def test_a_kind_not_yet_seen_is_scaled_from_the_kinds_seen():
    pace = TimeLeft(images_per_step=8)
    pace.trained("warmup", seconds=10.0, steps=10)  # 1 s a step
    expected = RELATIVE_COST["fusion"] / RELATIVE_COST["warmup"]
    assert pace.step_seconds("fusion") == pytest.approx(expected)
    # no evaluation yet: a forward pass of an image, from the classification pace
    assert pace.image_seconds() == pytest.approx(RELATIVE_COST["cls"] / RELATIVE_COST["warmup"] / 8 * EVAL_COST)
    assert pace.estimate([("fusion", 4)], 16) == pytest.approx(4 * expected + 16 * pace.image_seconds())


def test_a_pass_start_up_is_paid_once_per_pass_not_per_image():
    """A small validation pass whose loader took 4 s to start: the test pass, 9x longer, is not 9x its time."""
    pace = TimeLeft(images_per_step=10)
    pace.trained("cls", seconds=20.0, steps=10)
    pace.evaluated(seconds=10.0, images=75, startup=4.0)  # 6 s for 75 images once the first batch arrived
    assert pace.pass_seconds() == pytest.approx(4.0)
    assert pace.image_seconds() == pytest.approx(6.0 / 75)
    assert pace.estimate([], 675, passes=1) == pytest.approx(4.0 + 675 * 6.0 / 75)  # 58 s, not 90
    assert pace.estimate([], 675 + 75, passes=2) == pytest.approx(8.0 + 750 * 6.0 / 75)
    pace.evaluated(seconds=1.0, images=10, startup=5.0)  # a start-up longer than its pass is cut to the pass
    assert pace.pass_seconds() == pytest.approx(2.5) and pace.image_seconds() == pytest.approx(6.0 / 85)


def test_timed_pass_notes_when_the_first_item_arrived():
    def slow_start():
        time.sleep(0.05)
        yield from range(3)

    class Loader:
        def __iter__(self):
            return slow_start()

        def __len__(self):
            return 3

    timed = TimedPass(Loader())
    assert len(timed) == 3 and timed.startup == 0.0
    assert list(timed) == [0, 1, 2] and timed.startup >= 0.05
    assert list(TimedPass([])) == []


# -- run.json's parts --------------------------------------------------------------------------------------


def test_versions_machine_and_command_line():
    found = versions()
    assert set(found) == {"python", "racnn", "torch", "torchvision", "timm", "numpy"}
    assert found["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert found["racnn"] == racnn.__version__  # the code that runs, not a stale editable install's metadata
    info = machine(torch.device("cpu"))
    assert info["cpu"] and info["cpu_cores"] >= 1 and info["device"] == "cpu"
    assert command_line(["/x/racnn/__main__.py", "train", "--set", "a=b c"]) == "racnn train --set 'a=b c'"
    assert command_line(["/usr/bin/racnn", "train"]) == "racnn train"
    assert command_line(["bench.py", "--x"]) == "bench.py --x"


def test_git_commit_is_none_outside_a_checkout_and_when_git_fails(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None  # no .git: never asks git
    (tmp_path / ".git").mkdir()  # a .git git cannot read
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit(tmp_path) is None


def test_run_log_copies_the_racnn_logger_and_lets_go(tmp_path):
    logger = logging.getLogger("racnn.training.run")
    level = logging.getLogger("racnn").level
    logging.getLogger("racnn").setLevel(logging.INFO)
    try:
        run_log = RunLog(tmp_path)
        logger.info("[warmup e1] loss 1.0")
        run_log.close()
        logger.info("after the run")
    finally:
        logging.getLogger("racnn").setLevel(level)
    text = (tmp_path / "train.log").read_text()
    assert "[warmup e1] loss 1.0" in text and "after the run" not in text


# -- identity and the finished mark -------------------------------------------------------------------------


def _folder(tmp_path, run_id="abc"):
    cfg = load_config("synthetic_tiny")
    cfg.model.num_classes = 4
    write_record(tmp_path, {"run_id": run_id, "finished": None})
    (tmp_path / "config.yaml").write_text(json.dumps(config_to_dict(cfg)))  # JSON is YAML
    return cfg


def test_a_checkpoint_of_another_run_or_config_is_refused_in_one_line(tmp_path):
    cfg = _folder(tmp_path)
    ckpt = {"run_id": "abc", "config": config_to_dict(cfg)}
    check_identity(tmp_path, tmp_path / "last.pt", ckpt)  # its own: fine
    with pytest.raises(ConfigError, match=r"belongs to another run \(run id xyz; .*run.json says abc\)"):
        check_identity(tmp_path, tmp_path / "last.pt", {**ckpt, "run_id": "xyz"})
    other = config_to_dict(cfg)
    other["model"]["num_scales"] = 2
    with pytest.raises(ConfigError, match="model.num_scales is 3 in config.yaml, 2 in the checkpoint") as e:
        check_identity(tmp_path, tmp_path / "last.pt", {**ckpt, "config": other})
    assert "\n" not in str(e.value)
    other = config_to_dict(cfg)
    other["train"]["device"] = "cpu"  # a run setting a resume may change
    check_identity(tmp_path, tmp_path / "last.pt", {**ckpt, "config": other})


def test_finished_note_reads_run_json(tmp_path):
    _folder(tmp_path)
    assert finished_note(tmp_path) is None and finished_note(tmp_path / "last.pt") is None
    results = {"s1": 0.5, "fused": 0.75}
    write_record(tmp_path, {"run_id": "abc", "finished": "2026-12-07T12:00:00Z", "results": results})
    assert finished_note(tmp_path) is None  # its model.safetensors is gone: a kept last.pt may test it again
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    note = finished_note(tmp_path / "last.pt")
    assert "the run finished at 2026-12-07T12:00:00Z (test top-1 fused 75.00)" in note and "\n" not in note
    (tmp_path / "other").mkdir()
    assert finished_note(tmp_path / "other") is None  # a folder without run.json


# -- the model card ---------------------------------------------------------------------------------------


def test_model_card_tables_the_trained_heads_and_says_how_to_load():
    cfg = load_config("synthetic_tiny")
    cfg.model.num_classes = 4
    metrics = {"n_images": 8, "chosen_epoch": 5, "top1_s1": 0.5, "top5_s1": 1.0, "top1_fused": 0.625}
    metrics.update({"top1_s2": 0.25, "top1_avg": 0.5, "top5_avg": 1.0})
    record = {
        "run_id": "abc", "splits": {"train": 16, "val": 2, "test": 8}, "versions": {"racnn": "0.1.0"},
        "machine": {"cpu": "AMD EPYC", "cpu_cores": 2, "device": "cpu"}, "git": {"commit": "d749e1a", "dirty": False},
        "command": "racnn train --config synthetic_tiny", "train_seconds": 90.0, "precision": "fp32",
    }  # fmt: skip
    card = model_card(cfg, record, metrics, ["s1", "s2", "avg", "fused"], ["attention_final.png"], "tiny")
    assert card.startswith("---\nlibrary_name: racnn\n") and "value: 62.50" in card
    assert "| scale 1 | 50.00 | 100.00 |" in card and "| scale 2 | 25.00 | - |" in card
    assert "| **fused** (all scales; the answer) | 62.50 | - |" in card
    assert "![attention_final](attention_final.png)" in card and 'racnn.load("path/to/this/folder")' in card
    assert "images: train 16, val 2, test 8" in card and "git d749e1a" in card and "AMD EPYC (2 cores)" in card
    assert "training time: 1.5 min" in card
    untrained = results_table(metrics, ["s1", "avg"], 3)  # before fusion: no fused row, no model-index
    assert [line.split(" |")[0] for line in untrained[2:]] == ["| scale 1", "| avg (mean of the scales' probabilities)"]
    assert "model-index" not in model_card(cfg, record, metrics, ["s1", "avg"], [], "tiny")


def test_a_branch_is_a_run_of_its_own_with_the_branch_config(tmp_path):
    from racnn.checkpoint import load_checkpoint, save_checkpoint
    from racnn.training.run_files import branch_run
    from racnn.training.run_record import read_record

    source_cfg = load_config("synthetic_tiny", ["train.apn.epochs=0"])
    source_cfg.model.num_classes = 4
    source = save_checkpoint(
        tmp_path / "phase2_cls.pt",
        {"run_id": "source", "config": config_to_dict(source_cfg), "model": {}, "state": {"best": 0.5},
         "best_model": {"w": torch.ones(1)}},
    )  # fmt: skip
    cfg = load_config("synthetic_tiny")  # the full schedule; num_classes 0: counted when it runs
    out = branch_run(source, cfg, tmp_path / "branch")
    ckpt, record = load_checkpoint(out / "last.pt"), read_record(out)
    assert ckpt["run_id"] == record["run_id"] != "source" and record["branched_from"] == str(source)
    assert ckpt["best_model"] is None and ckpt["state"]["best"] is None  # it chooses among its own epochs
    check_identity(out, out / "last.pt", ckpt)  # its own, although the source's schedule differs
    ckpt["config"]["model"]["num_classes"] = 4  # as its last.pt says once it has run
    check_identity(out, out / "last.pt", ckpt)
