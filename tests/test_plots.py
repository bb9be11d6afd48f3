"""racnn.pictures.plots: training curves with one colour per scale in both panels, fused drawn once, phases named."""

from __future__ import annotations

from matplotlib.colors import to_hex
from matplotlib.text import Annotation

from racnn.pictures.plots import plot_training_curves, training_curves_figure


def _history() -> list[dict]:
    """Two epochs of each phase kind, validated at each phase's end, as racnn.training records them."""
    phases = [("warmup", 0), ("apn_pretrain", 0), ("cls", 1), ("apn", 1), ("fusion", 1)]
    losses = {
        "warmup": ["cls1", "cls2", "cls3"],
        "apn_pretrain": ["apn_pre1", "apn_pre2"],
        "cls": ["cls1", "cls2", "cls3"],
        "apn": ["rank1", "rank2"],
        "fusion": ["fuse1+2", "fuse1+2+3"],
    }
    history = []
    for index, (kind, round_index) in enumerate(phases):
        for epoch in (1, 2):
            row = {"phase": kind, "phase_index": index, "round": round_index, "epoch": epoch, "train_loss": 1.0}
            row.update({f"train_{name}": 1.0 / (len(history) + 1) for name in losses[kind]})
            if epoch == 2:
                row.update({f"val_top1_{h}": 0.5 for h in ("s1", "s2", "s3", "avg")})
            if epoch == 2 and kind == "fusion":
                row.update({"val_top1_1+2": 0.6, "val_top1_1+2+3": 0.7, "val_top1_fused": 0.7})
            history.append(row)
    return history


def test_one_colour_per_scale_in_both_panels_and_fused_drawn_once():
    ax_loss, ax_acc = training_curves_figure(_history()).axes[:2]
    loss = {line.get_label(): to_hex(line.get_color()) for line in ax_loss.get_lines()}
    acc = {line.get_label(): to_hex(line.get_color()) for line in ax_acc.get_lines()}
    assert set(acc) == {"s1", "s2", "s3", "avg", "1+2", "1+2+3 = fused"}  # no separate "fused" line to hide it
    for s in (1, 2, 3):
        assert loss[f"cls{s}"] == acc[f"s{s}"]  # a scale's loss and accuracy share a colour
    assert loss["rank1"] == loss["apn_pre1"] == acc["s2"]  # the losses of scale 2's box
    assert loss["rank2"] == acc["s3"]
    assert len({acc[h] for h in acc}) == len(acc)  # every head its own colour
    assert loss["fuse1+2"] == acc["1+2"] and loss["fuse1+2+3"] == acc["1+2+3 = fused"]


def test_phase_bands_are_named():
    fig = training_curves_figure(_history())
    for ax in fig.axes[:2]:
        names = [t.get_text() for t in ax.texts if not isinstance(t, Annotation)]
        assert names == ["warm-up", "APN pre-train", "cls 1", "apn (rank) 1", "fusion"]
        assert len(ax.patches) == 5  # one shaded band per phase


def test_plot_training_curves_writes_a_png(tmp_path):
    path = plot_training_curves(_history(), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_lone_validation_point_shows_its_value():
    """The fusion heads are validated once (at the fusion phase's end): their points carry their values."""
    ax_acc = training_curves_figure(_history()).axes[1]
    values = sorted(t.get_text() for t in ax_acc.texts if isinstance(t, Annotation))
    assert values == ["60.0", "70.0"]  # 1+2 and 1+2+3 = fused; s1..avg have two points each and no labels


def test_validated_only_at_the_end_the_val_panel_is_one_bar_per_head_with_its_value(tmp_path):
    history = [{k: v for k, v in row.items() if not k.startswith("val_")} for row in _history()]
    history[-1].update({"val_top1_s1": 0.25, "val_top1_s2": 0.5, "val_top1_1+2": 0.55, "val_top1_fused": 0.6})
    fig = training_curves_figure(history)
    ax_acc = fig.axes[1]
    assert ax_acc.get_lines() == [] and len(ax_acc.patches) == 3  # bars, no column of dots
    assert [t.get_text() for t in ax_acc.get_yticklabels()] == ["s1", "s2", "1+2 = fused"]
    assert sorted(t.get_text() for t in ax_acc.texts) == ["25.0", "50.0", "55.0"]
    assert "at epoch 10 (validated once)" in ax_acc.get_title()
    assert plot_training_curves(history, tmp_path / "curves.png").stat().st_size > 1000
