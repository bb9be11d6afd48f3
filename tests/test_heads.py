"""No untrained head is ever the answer: selection, checkpoints, the API, predict and the pictures fall back to the
mean of the scales, and say so once."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import racnn
from racnn.config import load_config
from racnn.modeling.heads import answer_head, head_names, heads_trained_by, is_trained
from racnn.training import fit
from test_checkpoint import CONFIG, TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_answer_head_falls_back_to_the_mean_of_trained_scales():
    scales = heads_trained_by("cls", 3)
    assert scales == ["s1", "s2", "s3", "avg"] and heads_trained_by("apn", 3) == []
    assert heads_trained_by("fusion", 3) == ["1+2", "1+2+3", "fused"]
    assert answer_head("fused", scales, 3) == "avg"
    assert answer_head("fused", scales + heads_trained_by("fusion", 3), 3) == "fused"
    assert answer_head("fused", None, 3) == "fused"  # unknown (an old checkpoint): taken as trained
    assert answer_head("fused", [], 3) == "fused"  # nothing trained at all: nothing better to offer
    assert set(head_names(2)) == {"s1", "s2", "1+2", "fused", "avg"}


@pytest.fixture(scope="module")
def no_fusion_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    cfg = load_config(CONFIG, [*TINY, f"train.output_dir={tmp}", "train.fusion.epochs=0", "train.visualize=true",
                                "train.keep_checkpoints=true"])  # fmt: skip
    return fit(cfg)


def test_a_run_without_fusion_phase_never_reports_or_selects_the_fusion_heads(no_fusion_run):
    result = no_fusion_run
    assert "fused" not in result.trained_heads and "avg" in result.trained_heads
    validated = [row for row in result.history if "val_top1_avg" in row]
    assert validated and not any("val_top1_fused" in row for row in result.history)
    assert all(row["untrained"] == "1+2 1+2+3 fused" for row in validated)
    best = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert best["state"]["best_metric"] == "val_top1_avg" and "fused" not in best["trained_heads"]


def test_the_api_answers_with_the_mean_of_the_scales_and_says_so_once(no_fusion_run):
    with pytest.warns(UserWarning, match="never trained.*mean of the scales"):
        predictor = racnn.load(no_fusion_run.run_dir / "best.pt", device="cpu")
    assert predictor.answer == "avg"
    images = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, at load: not again per prediction
        predictions = predictor.predict(images, topk=4)  # every class of the 4
    for prediction in predictions:
        per_scale = [{c.index: c.prob for c in scores} for scores in prediction.scales]
        mean = {k: sum(probs[k] for probs in per_scale) / len(per_scale) for k in range(4)}
        assert prediction.fused_key == "avg" and prediction.top.index == max(mean, key=mean.get)
        assert prediction.top.prob == pytest.approx(mean[prediction.top.index], abs=1e-5)


def test_eval_marks_untrained_heads_and_reports_the_mean_instead(no_fusion_run, tmp_path, capsys):
    from racnn.cli import main

    assert main(["eval", "--checkpoint", str(no_fusion_run.run_dir / "best.pt"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1+2+3" in out and "(never trained: not an answer)" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_head"] == "avg"


def test_is_trained_takes_an_unrecorded_list_as_all_heads():
    assert is_trained("fused", None)  # a checkpoint from before racnn recorded its trained heads
    assert is_trained("s1", ["s1", "avg"]) and not is_trained("fused", ["s1", "avg"])
    assert not is_trained("s1", [])
