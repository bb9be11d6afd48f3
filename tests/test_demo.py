"""racnn demo at reduced size, and every benchmark script at reduced size (columns and no crash; no speed or
accuracy is asserted here: those are measured by the benchmarks themselves, docs/BENCHMARKS.md)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_fixtures import make_cub
from racnn.checkpoint import load_checkpoint
from racnn.cli import main as cli_main
from racnn.cli.demo import accuracy_rows, demo_config, format_table

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_is_the_recipe_with_overrides():
    cfg = demo_config(small=True, overrides=["train.seed=3"])
    assert cfg.data.dataset == "synthetic" and cfg.model.num_scales == 3
    assert cfg.train.seed == 3 and cfg.train.name == "demo"
    assert cfg.data.synthetic_train == 240
    # The fine-detail mode, rendered at 256 px: scale 1's 64 px input cannot resolve the fine stripes.
    assert cfg.data.source_size == 256 and cfg.model.input_size == 64
    assert cfg.data.source_size / cfg.model.input_size >= cfg.data.options["detail_period"]


def test_accuracy_rows_and_table():
    metrics = {"top1_s1": 0.5, "top5_s1": 0.9, "top1_s2": 0.75, "top5_s2": 1.0, "top1_1+2": 0.8, "top5_1+2": 1.0}
    metrics |= {"top1_avg": 0.7, "top5_avg": 1.0}
    rows = accuracy_rows(metrics, {"top1": 0.6, "top5": 0.95}, num_scales=2)
    assert [r[0] for r in rows] == ["scale 1", "scale 2", "fused 1+2", "mean of the scales", "baseline (1 scale)"]
    untrained = accuracy_rows(metrics, {"top1": 0.6, "top5": 0.95}, 2, trained=["s1", "s2", "avg"])
    assert [r[0] for r in untrained] == ["scale 1", "scale 2", "mean of the scales", "baseline (1 scale)"]
    assert rows[1][1:] == (75.0, 100.0)
    table = format_table(rows)
    assert "| scale 2 | 75.0 | 100.0 |" in table and table.count("\n") == len(rows) + 1


@pytest.mark.slow
def test_demo_small_prints_the_table_and_writes_its_files(tmp_path, capsys):
    assert cli_main(["demo", "--small", "--output-dir", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for row in (
        "| scale 1 |",
        "| scale 2 |",
        "| scale 3 |",
        "| fused 1+2 |",
        "| fused 1+2+3 |",
        "| baseline (1 scale) |",
    ):
        assert row in out
    run = tmp_path / "demo"
    assert f"wrote {run}" in out
    for name in (
        "demo_table.md",
        "demo_summary.json",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
        "README.md",
        "run.json",
        "train.log",
        "config.yaml",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("attention_round*.png"))
    assert (run / "demo_table.md").read_text().startswith("| model | top-1 % | top-5 % |")


def _run(*args: str, timeout: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _tiny_run(tmp_path: Path, *extra: str) -> Path:
    """A run folder of synthetic_tiny at 32 px, trained through the APN pre-training (no ranking, no fusion)."""
    from racnn.config import RECIPES, load_config
    from racnn.training import fit

    settings = ["model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16",
                "data.synthetic_train=32", "data.synthetic_test=8", "data.synthetic_classes=4", "data.num_workers=0",
                "train.rounds=1", "train.warmup.epochs=1", "train.apn.epochs=0", "train.fusion.epochs=0",
                "train.visualize=false", f"train.output_dir={tmp_path}", *extra]  # fmt: skip
    return fit(load_config(RECIPES / "synthetic_tiny.yaml", settings)).run_dir


def test_bench_crop_reduced():
    out = _run("benchmarks/bench_crop.py", "--batch", "2", "--size", "48", "--out", "24", "--warmup", "1",
               "--repeats", "2", "--threads", "1")  # fmt: skip
    assert "| method |" in out and "attention_crop" in out and "per-sample reference" in out


def test_bench_data_reduced(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=8)
    out = _run("benchmarks/bench_data.py", "--data", str(root), "--size", "64", "--workers", "0",
               "--batch-size", "2", "--batches", "1")  # fmt: skip
    assert "| workers |" in out and "images/s" in out


@pytest.mark.slow
def test_bench_train_reduced():
    out = _run("benchmarks/bench_train.py", "--backbone", "tiny", "--input-size", "64", "--zoom-size", "48",
               "--classes", "5", "--steps", "1", "--images", "1", "--modes", "fp32", "--regions", "2")  # fmt: skip
    assert "2 regions per zoomed scale" in out and "images/s" in out
    row = next(line for line in out.splitlines() if line.startswith("| fp32 |"))
    assert "failed" not in row and "gave up" not in row, row  # both workers measured, with two regions


def test_time_left_benchmark_scores_the_printed_estimate_against_the_truth(tmp_path):
    """benchmarks/time_left.py: after each epoch, the estimate a run printed against train_seconds - elapsed_s."""
    done, running = tmp_path / "done", tmp_path / "running"
    header = "phase,global_epoch,train_loss,elapsed_s,time_left_s\n"
    for run in (done, running):
        run.mkdir()
        (run / "metrics.csv").write_text(header + "cls,1,2.0,100,330\ncls,2,1.0,200,150\nfusion,3,0.5,280,\n")
    (done / "run.json").write_text('{"run_id": "a", "train_seconds": 400}')
    (running / "run.json").write_text('{"run_id": "b", "train_seconds": null}')
    out = _run("benchmarks/time_left.py", str(done), str(running))
    assert "| 1 | cls | 100 | 330 | 300 | +10 % |" in out  # 30 s long of the 300 s left
    assert "| 2 | cls | 200 | 150 | 200 | -25 % |" in out
    assert "| 3 |" not in out  # a row without an estimate (none was printed) is left out
    assert f"{running}: not finished" in out


def _accuracy_args(root: Path, runs: Path, input_size: int, zoom_size: int, steps: int) -> list[str]:
    """benchmarks/accuracy.py on a fake CUB folder with tiny networks and ``steps`` optimiser steps per epoch."""
    settings = [
        "model.backbone=tiny", "model.pretrained=null", f"model.input_size={input_size}",
        f"model.zoom_size={zoom_size}", "model.apn_hidden=16", "data.num_workers=0", "data.batch_size=8",
        "train.channels_last=false", f"train.max_steps_per_epoch={steps}", "train.visualize=false",
        "train.progress=false",
    ]  # fmt: skip
    args = ["benchmarks/accuracy.py", "--data", str(root), "--output-dir", str(runs)]
    return args + [a for s in settings for a in ("--set", s)]


@pytest.mark.slow
def test_accuracy_benchmark_reduced(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=4)
    args = _accuracy_args(root, tmp_path / "runs", input_size=64, zoom_size=48, steps=2)
    out = _run(*args, "--set", "data.source_size=96")  # the zooms read the photo at 96 px: the wide row's size
    assert "| model | seed | val top-1 % | test top-1 % | test s1 | test s2 | test s3 | wall |" in out
    for model in ("baseline (1 network)", "1 network at 96 px", "ensemble of 3 baselines", "fixed zoom (attention off)",
                  "oracle zoom (the object box)", "APN pre-trained only", "RA-CNN"):  # fmt: skip
        assert f"| {model} | 0 |" in out and f"| {model} | 1 |" in out, model  # two seeds by default
        assert f"| {model} | 2 |" in out.split("| model | seeds |")[1]  # the summary over both seeds
    boxes = out.split("Attention against the object boxes:")[1]
    for model in ("fixed zoom (attention off)", "oracle zoom (the object box)", "APN pre-trained only", "RA-CNN"):
        for split in ("val", "test"):
            assert f"| {model} | 1 | {split} | 2 |" in boxes and f"| {model} | 1 | {split} | 3 |" in boxes
    assert "The objects' own spread (test, 6 images)" in boxes
    # The full run branched off the pre-trained-only run's checkpoint at the end of its classification phase.
    assert (tmp_path / "runs" / "cpu_lite0_cub50_pretrained_s0" / "phase2_cls.pt").is_file()
    history = load_checkpoint(tmp_path / "runs" / "cpu_lite0_cub50_s0" / "last.pt")["state"]["history"]
    assert list(dict.fromkeys(row["phase"] for row in history)) == ["apn_pretrain", "cls", "apn", "fusion"]


def test_accuracy_benchmark_notes_the_rows_a_data_set_cannot_have(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=2, boxes=False)
    args = _accuracy_args(root, tmp_path / "runs", input_size=48, zoom_size=32, steps=1)
    out = _run(*args, "--seeds", "0", "--models", "oracle,wide")
    assert "no 'oracle zoom (the object box)' row: model.oracle_zoom needs object boxes" in out
    assert "no '1 network at 48 px' row: the zooms read the image at scale 1's size" in out
    assert "| 0 |" not in out.split("| model | seeds |")[0]  # no row was trained


@pytest.mark.slow
def test_accuracy_benchmark_resumes(tmp_path):
    """--resume reads finished runs back (the same rows, nothing retrained) and continues a stopped one."""
    root = make_cub(tmp_path / "CUB_200_2011", per_class=3)
    runs = tmp_path / "runs"
    args = _accuracy_args(root, runs, input_size=48, zoom_size=32, steps=1) + ["--seeds", "0", "--models",
                                                                                "fixed,pretrained,racnn"]  # fmt: skip

    def rows(out: str) -> dict[str, list[str]]:  # model -> its cells but the wall time
        table = out.split("| model | seeds |")[0]
        return {line.split(" | ")[0]: line.split(" | ")[1:-1] for line in table.splitlines() if " | 0 | " in line}

    first = rows(_run(*args))
    assert set(first) == {"| fixed zoom (attention off)", "| APN pre-trained only", "| RA-CNN"}
    full = runs / "cpu_lite0_cub50_s0"
    # The full run stopped after its last epoch, before its test: --resume continues it (it only tests).
    (full / "metrics.json").unlink()
    (full / "model.safetensors").unlink()
    stamp = (runs / "cpu_lite0_cub50_pretrained_s0" / "last.pt").stat().st_mtime
    assert rows(_run(*args, "--resume")) == first
    assert (full / "metrics.json").is_file()
    assert (runs / "cpu_lite0_cub50_pretrained_s0" / "last.pt").stat().st_mtime == stamp  # read back, not rerun
    assert sorted(p.name for p in runs.iterdir()) == [
        "cpu_lite0_cub50_fixed_s0", "cpu_lite0_cub50_pretrained_s0", "cpu_lite0_cub50_s0"
    ]  # fmt: skip
    # Runs started with other settings are not taken over.
    proc = subprocess.run([sys.executable, *args, "--resume", "--set", "train.margin=0.1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode != 0 and "was run with other settings (train.margin)" in proc.stderr
    # Without --resume the runs go to new folders, beside the old ones.
    _run(*args, "--models", "pretrained,racnn")
    assert (runs / "cpu_lite0_cub50_pretrained_s0-1").is_dir() and (runs / "cpu_lite0_cub50_s0-1").is_dir()


@pytest.mark.slow
def test_box_spread_reduced(tmp_path):
    run = _tiny_run(tmp_path, "model.regions=2")
    out = _run("benchmarks/box_spread.py", str(run), "--split", "test", "--images", "6")
    assert "| run | scale | region | centre x | centre y | side | std centre x |" in out
    lines = [line for line in out.splitlines() if line.startswith(f"| {run.name} |")]
    assert [line.split(" | ")[1:3] for line in lines] == [
        ["2", "1"],
        ["2", "2"],
        ["3", "1"],
        ["3", "2"],
        ["objects", "-"],
    ]
    assert all(line.endswith("| 6 |") for line in lines)  # the synthetic objects' own spread over the same 6 images


@pytest.mark.slow
def test_box_picture_reduced(tmp_path):
    run = _tiny_run(tmp_path, "train.pretrain_side=0.5")
    oracle = _tiny_run(tmp_path, "model.oracle_zoom=true", "train.name=oracle")  # its items carry the object boxes
    picture = tmp_path / "boxes.png"
    out = _run("benchmarks/box_picture.py", str(run), str(oracle), "--names", "learnt,oracle", "--split", "test",
               "--images", "6", "--out", str(picture))  # fmt: skip
    lines = {line.split(":")[0]: line for line in out.splitlines() if " images; r: " in line}
    assert set(lines) == {"learnt", "oracle"} and all("6 images" in line for line in lines.values())
    offsets = [float(v) for v in lines["oracle"].split("mean centre offset x ")[1].split(", y ")]
    assert max(abs(v) for v in offsets) < 0.02  # the oracle's box is centred on the object (moved inside the image)
    assert "centre x against object's 1.000" in lines["oracle"]
    assert picture.stat().st_size > 10_000 and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_box_picture_rows_and_correlation():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from box_picture import box_and_object, correlation
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    boxes = torch.tensor([[0.5, 0.5, 0.25], [0.3, 0.4, 0.1], [0.6, 0.6, 0.2]])  # (cx, cy, half side)
    objects = torch.tensor([[0.25, 0.25, 0.75, 0.75], [float("nan")] * 4, [0.5, 0.5, 0.7, 0.9]])  # xyxy; one unknown
    box, obj = box_and_object(boxes, objects)
    assert box.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5, 0.4, 0.6, 0.6])  # side, cx, cy of the known two
    assert obj.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5, (0.2 * 0.4) ** 0.5, 0.6, 0.7])  # sqrt(area), centre
    assert correlation(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6])) == pytest.approx(1.0)
    assert math.isnan(correlation(torch.ones(3), torch.tensor([1.0, 2, 3])))  # a fixed zoom's side


@pytest.mark.slow
def test_pretrain_targets_reduced(tmp_path):
    run = _tiny_run(tmp_path, "train.pretrain_side=0.5")
    out = _run("benchmarks/pretrain_targets.py", str(run), "--split", "test", "--images", "6", "--thresholds",
               "0.3,0.5", "--cam-size", "64", "--zoom-sides", "0.5,1.0")  # fmt: skip
    assert "| target | IoU | covers object | on object | centre in | side | side corr |" in out
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in out.splitlines() if line.startswith("| ")}
    names = ["channels", "cam", "cam_extent t=0.3", "cam_extent t=0.5", "channels_extent t=0.3", "apn",
             "channels_extent t=0.5", "cam_extent t=0.3 at 64 px", "channels_extent t=0.5 at 64 px",
             "zoom_gain"]  # fmt: skip
    assert all(name in rows for name in names), out
    assert 0.5 - 1e-6 <= float(rows["zoom_gain"][4]) <= 1 + 1e-6  # one of the two candidate sides, on average
    assert float(rows["channels"][4]) == pytest.approx(0.5) and float(rows["cam"][4]) == pytest.approx(0.5)
    assert all(0 <= float(rows[name][0]) <= 1 for name in names) and "objects" in rows  # IoUs; the yardstick


@pytest.mark.slow
def test_apn_diagnostics_reduced(tmp_path):
    run = _tiny_run(tmp_path, "train.keep_phase_checkpoints=true")
    out = _run("benchmarks/apn_diagnostics.py", "--checkpoint", str(run / "phase3_cls.pt"), "--images", "16")
    for row in ("| p_t s1 |", "| hinge active 1>2 |", "| grad norm APN 1 |", "| centre room s2 |",
                "| centre motion s2 |", "| side change s3 |"):  # fmt: skip
        assert row in out, row


@pytest.mark.slow
def test_synthetic_attention_reduced(tmp_path):
    settings = ["model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16",
                "data.synthetic_train=48", "data.synthetic_test=8", "data.synthetic_classes=4", "data.num_workers=0",
                "data.val_fraction=0.25", "train.warmup.epochs=1", "train.cls.epochs=1",
                "train.progress=false"]  # fmt: skip
    out = _run("benchmarks/synthetic_attention.py", "--seeds", "0", "--output-dir", str(tmp_path),
               "--compare", "train.rank_coarser=trained", *[a for s in settings for a in ("--set", s)])  # fmt: skip
    assert "| 0 | APN pre-trained (before ranking) |" in out and "| 0 | after the ranking phase |" in out
    assert "| as configured | IoU s2 |" in out and "| beyond seed spread |" in out
    before = load_checkpoint(tmp_path / "attention_s0" / "phase3_cls.pt")["model"]
    after = load_checkpoint(tmp_path / "attention_s0" / "phase4_apn.pt")["model"]
    apn = [k for k in before if k.startswith("apns.")]
    assert any(not torch.equal(before[k], after[k]) for k in apn)  # the ranking phase moved the APNs
    assert all(torch.equal(before[k], after[k]) for k in before if k not in apn)  # and nothing else
    assert "| 0 | after the ranking phase, train.rank_coarser=trained |" in out  # a variant from the same checkpoint
    variant = load_checkpoint(tmp_path / "attention_s0_variant1" / "phase4_apn.pt")["model"]
    assert any(not torch.equal(after[k], variant[k]) for k in apn)


@pytest.mark.slow
def test_apn_capacity_reduced(tmp_path):
    run = _tiny_run(tmp_path)
    out = _run("benchmarks/apn_capacity.py", str(run), "--maps", "glance,last@64", "--targets",
               "object,cam_extent@64", "--epochs", "2")  # fmt: skip
    assert "| map | target | fit on train (IoU) | IoU | covers object | side | side corr |" in out
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ")[2:] for line in out.splitlines() if line.startswith("| ")}
    names = [("| glance", "object"), ("| last@64", "object"), ("| glance", "cam_extent@64"),
             ("| none", "object: the mean box"), ("| checkpoint's APN", "its own")]  # fmt: skip
    assert all(name in rows for name in names), out
    assert all(0 <= float(rows[name][1]) <= 1 for name in names)  # IoUs with the objects
    assert float(rows[("| none", "object: the mean box")][5]) == 0  # a constant box does not move
