"""`racnn eval` reproduces the run's own test table, to the digit, and prints it in the formats to paste."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

import racnn.training.results_table as results
from racnn.cli import main
from racnn.cli.evaluate import FORMAT_NAMES
from racnn.config import RECIPES
from racnn.training.results_table import FORMATS, Column, render, results_table

TINY = [
    *("model.input_size=32", "model.zoom_size=32", "model.apn_pool=2", "model.apn_hidden=16"),
    *("data.synthetic_train=24", "data.synthetic_test=13", "data.synthetic_classes=4", "data.batch_size=8"),
    *("data.eval_batch_size=5", "data.num_workers=0", "train.rounds=1", "train.warmup.epochs=1"),
    *("train.apn_pretrain.epochs=1", "train.cls.epochs=1", "train.apn.epochs=1", "train.fusion.epochs=1"),
    *("train.visualize=false", "train.device=cpu"),
]


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory) -> Path:
    """A finished tiny run trained and tested in float32 (``train.amp none``, as the CPU recipe)."""
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["train", "--config", str(RECIPES / "synthetic_tiny.yaml"), "--output-dir", str(out), "-q"]
        for item in [*TINY, "train.amp=none"]:
            args += ["--set", item]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "synthetic_tiny"


@pytest.mark.usefixtures("one_thread")
def test_eval_gives_the_runs_test_metrics_exactly_even_on_a_bf16_cpu(fp32_run, tmp_path, monkeypatch, capsys):
    """The run tested in fp32; on a CPU with oneDNN bf16 kernels eval still runs fp32 and gives the same numbers."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(fp32_run), "--out", str(tmp_path / "ev"), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"].startswith("fp32 (amp none as asked), channels-last")
    assert printed["precision"].endswith("from the run's train.amp none")
    assert "shorter side to 32 (bilinear, antialiased), centre crop 32" in printed["preprocessing"]
    assert printed["preprocessing"].endswith("(the run's)")
    recorded = json.loads((fp32_run / "metrics.json").read_text())
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == recorded  # every number, every digit
    assert {k: printed["metrics"][k] for k in recorded if k in printed["metrics"]} == {
        k: v for k, v in recorded.items() if isinstance(v, (int, float))
    }


@pytest.mark.usefixtures("one_thread")
def test_amp_flag_overrides_the_runs_precision_and_says_so(fp32_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(fp32_run), "--out", str(tmp_path / "ev"), "--amp", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "precision: bf16 (amp bf16 as asked), channels-last; from --amp bf16" in out
    assert "scale 1" in out and "13 images" in out


def test_text_table_is_the_one_eval_has_always_printed(fp32_run):
    metrics = json.loads((fp32_run / "metrics.json").read_text())
    lines = render(results_table(metrics, 3)).splitlines()
    assert lines[0] == "head          top-1 %  top-5 %"
    assert lines[1] == f"scale 1      {100 * metrics['top1_s1']:>8.2f} {100 * metrics['top5_s1']:>8.2f}"
    assert lines[7] == f"13 images; ranking loss {metrics['rank_loss']:.4f}"
    assert lines[8].split()[:5] == ["attention", "side", "%", "centre", "in"]
    assert lines[9].startswith("box s2       ") and lines[10].startswith("box s3       ")


METRICS = {
    "n_images": 10, "rank_loss": 0.01234, "top1_s1": 0.5, "top5_s1": 0.9, "top1_s2": 0.6, "top5_s2": 1.0,
    "top1_1+2": 0.7, "top5_1+2": 1.0, "top1_avg": 0.65, "top5_avg": 1.0, "box_side_s2": 0.4213,
    "box_in_object_s2": 0.8, "box_iou_s2": 0.51234,
}  # fmt: skip
THREE_COLUMNS = [  # the renderings are tested on three box columns (the table's own are in test_box_scores.py)
    Column("side %", "box_side_{row}", 100, 1),
    Column("on obj. %", "box_in_object_{row}", 100, 1, width=9),
    Column("IoU", "box_iou_{row}", 1, 3, width=6),
]


@pytest.fixture
def three_columns(monkeypatch):
    monkeypatch.setattr(results, "BOX_COLUMNS", THREE_COLUMNS)


@pytest.mark.usefixtures("three_columns")
def test_formats_carry_the_same_numbers():
    table = results_table(METRICS, 2, trained=["s1", "s2", "avg"])
    markdown = render(table, "markdown")
    assert "| head | top-1 % | top-5 % |" in markdown and "| scale 2 | 60.00 | 100.00 |" in markdown
    assert "| 1+2 † | 70.00 | 100.00 |" in markdown and "† never trained: not an answer" in markdown
    assert "| box s2 | 42.1 | 80.0 | 0.512 |" in markdown
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    assert rows[0] == {
        "section": "head", "row": "scale 1", "top-1 %": "50.00", "top-5 %": "90.00", "side %": "", "on obj. %": "",
        "IoU": "", "note": "",
    }  # fmt: skip
    assert rows[-1]["row"] == "box s2" and rows[-1]["IoU"] == "0.512" and rows[2]["note"].startswith("never")
    latex = render(table, "latex")
    assert r"\begin{tabular}{lrr}" in latex and r"head & top-1 \% & top-5 \% \\" in latex
    assert r"1+2$^\dagger$ & 70.00 & 100.00 \\" in latex and r"box s2 & 42.1 & 80.0 & 0.512 \\" in latex
    data = json.loads(render(table, "json"))
    assert data["table"]["head"][1] == {"row": "scale 2", "key": "s2", "top-1 %": 60.0, "top-5 %": 100.0}
    assert data["metrics"] == METRICS


def test_a_new_box_metric_is_one_column_in_every_format(monkeypatch):
    """The attention box scores of issue 25 (or any ``box_<name>_s<s>`` key) are one more entry in BOX_COLUMNS."""
    monkeypatch.setattr(results, "BOX_COLUMNS", [*THREE_COLUMNS, Column("hit %", "box_hit_{row}", 100)])
    table = results_table({**METRICS, "box_hit_s2": 0.25}, 2)
    assert "box s2           42.1      80.0  0.512    25.00" in render(table, "text")
    assert "| box s2 | 42.1 | 80.0 | 0.512 | 25.00 |" in render(table, "markdown")
    assert list(csv.DictReader(io.StringIO(render(table, "csv"))))[-1]["hit %"] == "25.00"
    assert r"box s2 & 42.1 & 80.0 & 0.512 & 25.00 \\" in render(table, "latex")
    assert json.loads(render(table, "json"))["table"]["attention"][0]["hit %"] == 25.0


def test_format_names_in_help_are_the_renderers():
    assert tuple(FORMATS) == FORMAT_NAMES


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="format must be one of text, markdown"):
        render(results_table(METRICS, 2), "html")


def test_an_auto_run_is_evaluated_in_the_precision_its_run_json_records(tmp_path):
    from racnn.cli.evaluate import _recorded_amp

    assert _recorded_amp(tmp_path) == ""  # no run.json: the stored train.amp decides
    record = {"run_id": "x", "precision": "bf16", "resumed": [{"precision": "fp32"}]}
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert _recorded_amp(tmp_path) == "none"  # the last session's, the one that tested
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "precision": "bf16", "resumed": []}))
    assert _recorded_amp(tmp_path) == "bf16"
    (tmp_path / "run.json").write_text("{not json")
    assert _recorded_amp(tmp_path) == ""
