"""Scale-out: the evaluation sampler, and a 2-process torchrun (gloo, CPU) run through every phase."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from racnn.checkpoint import load_model
from racnn.config import RECIPES
from racnn.distributed import ShardSampler
from racnn.training import build_split, evaluate, make_eval_loader, object_boxes_in_input, scalar_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = RECIPES / "synthetic_tiny.yaml"


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_sampler_covers_every_index_once(world_size):
    shards = [list(ShardSampler(11, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(ShardSampler(11, r, world_size)) for r in range(world_size)] == [len(s) for s in shards]


def test_torchrun_two_processes_match_single_process_evaluation(tmp_path):
    settings = [
        "model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16",
        "data.synthetic_train=48", "data.synthetic_test=21",  # 21: shards of 11 and 10, nothing padded
        "data.synthetic_classes=4", "data.batch_size=8", "data.eval_batch_size=8", "data.hflip=true",
        "train.rounds=1", "train.warmup.epochs=1", "train.apn_pretrain.epochs=1", "train.cls.epochs=1",
        "train.apn.epochs=1", "train.fusion.epochs=1", "train.grad_accum=2", f"train.output_dir={tmp_path}",
        "train.amp=none",  # the processes do not get the suite's fake CPU: float32 on any machine, as below
    ]  # fmt: skip
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += ["-m", "racnn", "train", "--config", str(CONFIG)]
    for item in settings:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "synthetic_tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_tiny"]  # one run folder, written by rank 0
    with open(run / "metrics.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [row["phase"] for row in history] == ["warmup", "apn_pretrain", "cls", "apn", "fusion"]
    assert all(row["train_steps"] == "2" for row in history)  # 24 images per process, batches of 8, accumulate 2
    assert json.loads((run / "run.json").read_text())["finished"] and not (run / "last.pt").exists()
    distributed = json.loads((run / "metrics.json").read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, cfg, class_names = load_model(run / "model.safetensors")  # the model chosen on val is the one tested
        test_set = build_split(cfg, "test", model.mean, model.std)
        single = evaluate(
            model, make_eval_loader(test_set, 5), margin=cfg.train.margin, channels_last=cfg.train.channels_last,
            object_boxes=object_boxes_in_input(test_set, cfg.model.input_size, cfg.data.resize_ratio),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    single = scalar_metrics(single)
    assert single["n_images"] == distributed["n_images"] == 21
    assert set(single) == set(scalar_metrics(distributed))
    for key, value in single.items():
        if key.startswith(("top1", "top5", "box_in_object", "n_")):
            assert distributed[key] == value, key  # counts: exactly equal
        elif "_std" in key or "_corr_" in key:  # from sums of squares: the order's rounding is amplified where the
            assert distributed[key] == pytest.approx(value, abs=1e-3), key  # values barely vary (a side std of 1e-4)
        else:
            assert distributed[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key  # float sums: other order
