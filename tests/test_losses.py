"""Losses against hand-computed values; APN pre-training targets."""

import math

import pytest
import torch
import torch.nn.functional as F

from racnn.modeling.losses import apn_pretrain_loss, apn_targets, classification_losses, ranking_losses


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_ranking_losses_hand_computed():
    # Three scales, two samples, three classes; targets 0 and 2.
    logits = [
        [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        [[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
        [[3.0, 0.0, 0.0], [0.0, 0.0, 0.5]],
    ]
    target = [0, 2]
    p = [[_softmax(scale[b])[target[b]] for b in range(2)] for scale in logits]  # p[s][b]
    margin = 0.05
    expected = {f"rank{s + 1}": sum(max(0.0, p[s][b] - p[s + 1][b] + margin) for b in range(2)) / 2 for s in range(2)}
    got = ranking_losses([torch.tensor(x, dtype=torch.float64) for x in logits], torch.tensor(target), margin)
    assert set(got) == {"rank1", "rank2"}
    for name, value in expected.items():
        assert got[name].dim() == 0
        assert got[name].item() == pytest.approx(value, abs=1e-12)
    # Sample 0, scales 1 -> 2: p drops from 0.787 to 0.576, so the loss is p1 - p2 + margin > margin.
    assert p[0][0] - p[1][0] + margin > margin


def test_ranking_loss_zero_when_finer_scale_more_confident_by_margin():
    # p_t = softmax([a, 0])[0]; scale 2 beats scale 1 by more than the margin for both samples.
    logits = [torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])]
    target = torch.tensor([0, 1])
    p1, p2 = _softmax([0.0, 0.0])[0], _softmax([1.0, 0.0])[0]
    assert p2 - p1 > 0.05  # 0.731 vs 0.5
    assert ranking_losses(logits, target)["rank1"].item() == 0.0
    # With a margin larger than the gaps the hinge opens again: sample 0 gives 0.5 - 0.731 + 0.3.
    value = ranking_losses(logits, target, margin=0.3)["rank1"].item()
    p1b, p2b = _softmax([0.0, 1.0])[1], _softmax([0.0, 3.0])[1]
    assert value == pytest.approx((max(0, p1 - p2 + 0.3) + max(0, p1b - p2b + 0.3)) / 2, abs=1e-6)


def test_ranking_loss_uses_probabilities_not_logits():
    # Same logit gap, different other-class logits: the probabilities (and the loss) differ.
    target = torch.tensor([0])
    a = ranking_losses([torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])], target, margin=0.0)["rank1"]
    b = ranking_losses([torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]])], target, margin=0.0)["rank1"]
    assert a.item() == 0.0
    assert b.item() == pytest.approx(_softmax([1.0, 0.0])[0] - _softmax([1.0, 2.0])[0], abs=1e-6)


def test_classification_losses():
    torch.manual_seed(0)
    logits = [torch.randn(4, 6) for _ in range(3)]
    target = torch.tensor([0, 5, 2, 2])
    got = classification_losses(logits, target, label_smoothing=0.1)
    assert list(got) == ["cls1", "cls2", "cls3"]
    for s, x in enumerate(logits):
        log_p = x.log_softmax(1)
        by_hand = -(0.9 * log_p.gather(1, target[:, None]).squeeze(1) + 0.1 * log_p.mean(1)).mean()
        torch.testing.assert_close(got[f"cls{s + 1}"], by_hand)


def _bump(size: int, row: int, col: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.exp(-((coords[:, None] - row) ** 2 + (coords[None, :] - col) ** 2) / 8)  # (size, size)


@pytest.mark.parametrize(
    ("row", "col", "expected_ty", "expected_tx"),
    [
        (5, 9, (5 + 0.5) / 14, (9 + 0.5) / 14),  # inside: centred on the planted maximum's cell
        (7, 7, 7.5 / 14, 7.5 / 14),
        (0, 13, 0.25, 0.75),  # corner: clipped so the box (half side 0.25) stays inside
        (12, 1, 0.75, 0.25),
    ],
)
def test_apn_targets_centred_on_planted_maximum(row, col, expected_ty, expected_tx):
    torch.manual_seed(0)
    # 14 x 14 map and side 1/2: a 7 x 7 window, so the best window is centred on the bump's cell.
    fmap = 0.01 * torch.rand(2, 8, 14, 14) + 3 * _bump(14, row, col)
    fmap[1] = 0.01 * torch.rand(8, 14, 14) + 3 * _bump(14, 6, 6)
    targets = apn_targets(fmap, side=0.5)
    assert targets.shape == (2, 3) and not targets.requires_grad
    torch.testing.assert_close(targets[0], torch.tensor([expected_tx, expected_ty, 0.25]))
    torch.testing.assert_close(targets[1], torch.tensor([6.5 / 14, 6.5 / 14, 0.25]))


def test_apn_targets_non_square_map():
    fmap = 5 * _bump(20, 3, 15)[None, None, :10, :]  # (1, 1, 10, 20): maximum at row 3, col 15
    # Window 5 x 5 cells (half the shorter side); the half side is 0.25 of H = 0.125 of W.
    torch.testing.assert_close(apn_targets(fmap, side=0.5)[0], torch.tensor([15.5 / 20, 3.5 / 10, 0.25]))


def test_apn_targets_clipped_when_window_is_rounded_down():
    # 13 x 13 map: the window is round(6.5) = 6 cells < half the side; in the corner its centre (3 / 13) would
    # leave the box (half side 0.25) partly outside the image, so it is clipped to 0.25.
    fmap = 3 * _bump(13, 0, 12)[None, None]
    torch.testing.assert_close(apn_targets(fmap, side=0.5)[0], torch.tensor([0.75, 0.25, 0.25]))


def test_apn_pretrain_loss():
    boxes = torch.tensor([[0.5, 0.5, 0.3], [0.2, 0.8, 0.25]], requires_grad=True)
    targets = torch.tensor([[0.55, 0.5, 0.25], [0.6, 0.8, 0.25]])
    got = apn_pretrain_loss(boxes, targets)
    assert list(got) == ["apn_pre"]
    # beta = 0.1: |d| < 0.1 -> 0.5 d^2 / 0.1, else |d| - 0.05; mean over the 6 entries.
    by_hand = (0.5 * 0.05**2 / 0.1 + 0.5 * 0.05**2 / 0.1 + (0.4 - 0.05)) / 6
    assert got["apn_pre"].item() == pytest.approx(by_hand, abs=1e-7)
    got["apn_pre"].backward()
    assert boxes.grad is not None
    torch.testing.assert_close(got["apn_pre"], F.smooth_l1_loss(boxes, targets, beta=0.1))


@pytest.mark.parametrize(
    ("spot", "centre"),
    [
        ((13, 13), (0.5, 0.5)),  # a 2 x 2 spot in the middle of a 28 x 28 map: the box centred on it
        ((0, 0), (0.25, 0.25)),  # a spot in the corner: the box in that corner, the spot inside it
        ((0, 26), (0.75, 0.25)),  # top-right corner: x to the right, y at the top
    ],
)
def test_apn_target_centres_a_spot_smaller_than_the_window(spot, centre):
    feature_map = torch.zeros(1, 4, 28, 28)
    row, col = spot
    feature_map[0, :, row : row + 2, col : col + 2] = 1.0
    tx, ty, tl = apn_targets(feature_map, side=0.5)[0].tolist()
    assert (tx, ty) == pytest.approx(centre, abs=1e-6)
    assert tl == pytest.approx(0.25)
    x1, y1 = (tx - tl) * 28, (ty - tl) * 28
    assert x1 <= col and col + 2 <= x1 + 14 and y1 <= row and row + 2 <= y1 + 14  # the spot lies in the box


def test_ranking_loss_with_the_coarser_scale_fixed_only_pushes_the_finer_one():
    coarse = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    fine = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0])
    literal = ranking_losses([coarse, fine], target)["rank1"]
    fixed = ranking_losses([coarse, fine], target, coarser_fixed=True)["rank1"]
    assert fixed.item() == pytest.approx(literal.item()) and literal.item() > 0  # the same value, active
    fixed.backward()
    assert coarse.grad is None or not coarse.grad.any()  # no push on the coarser scale
    assert fine.grad[0, 0] < 0  # descent raises the finer scale's true-class logit
