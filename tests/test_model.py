"""RACNN: shapes, gradients, parameter groups, box parametrisation."""

from types import SimpleNamespace

import pytest
import torch

from racnn.modeling.crop import attention_crop, compose_boxes
from racnn.modeling.losses import ranking_losses
from racnn.modeling.model import APN, RACNN, RACNNOutput, apn_boxes

NUM_CLASSES = 5


def _model(backbone: str, num_scales: int, input_size: int, zoom_size: int) -> RACNN:
    torch.manual_seed(0)
    return RACNN(
        backbone,
        num_classes=NUM_CLASSES,
        num_scales=num_scales,
        input_size=input_size,
        zoom_size=zoom_size,
        apn_pool=3,
        apn_hidden=16,
    )


@pytest.mark.parametrize("num_scales", [2, 3, 4])
@pytest.mark.parametrize(
    ("backbone", "input_size", "zoom_size", "channels", "stride"),
    [("tiny", 96, 64, 128, 8), ("tf_efficientnet_lite0", 96, 64, 1280, 32)],
)
def test_forward_backward_shapes(backbone, num_scales, input_size, zoom_size, channels, stride):
    model = _model(backbone, num_scales, input_size, zoom_size)
    images = torch.randn(2, 3, input_size, input_size)
    out = model(images)
    assert isinstance(out, RACNNOutput)
    S, B, K = num_scales, 2, NUM_CLASSES
    assert [x.shape for x in out.logits] == [(B, K)] * S
    assert list(out.fused) == ["+".join(str(i) for i in range(1, n + 1)) for n in range(2, S + 1)]
    assert all(x.shape == (B, K) for x in out.fused.values())
    assert [x.shape for x in out.boxes] == [(B, 3)] * (S - 1)
    assert [x.shape for x in out.boxes_in_image] == [(B, 3)] * (S - 1)
    assert out.crops[0] is images
    assert [x.shape for x in out.crops[1:]] == [(B, 3, zoom_size, zoom_size)] * (S - 1)
    assert [x.shape for x in out.features] == [(B, channels)] * S
    side = [input_size // stride] + [zoom_size // stride] * (S - 1)
    assert [x.shape for x in out.feature_maps] == [(B, channels, h, h) for h in side]
    for s, (composed, expected) in enumerate(zip(out.boxes_in_image, compose_boxes(out.boxes), strict=True)):
        torch.testing.assert_close(composed, expected)
        # Every zoomed input is sampled from the original image with the composed box.
        torch.testing.assert_close(out.crops[s + 1], attention_crop(images, composed, zoom_size, k=model.mask_k))
    # The initial APN box is centred with the middle side: tl = 1/6 + (1/2 - 1/6) / 2 = 1/3.
    torch.testing.assert_close(out.boxes[0], torch.tensor([[0.5, 0.5, 1 / 3]] * B), atol=2e-2, rtol=0)

    loss = sum(x.logsumexp(1).sum() for x in out.logits) + sum(x.logsumexp(1).sum() for x in out.fused.values())
    loss = loss + sum(c.square().mean() for c in out.crops[1:])
    loss.backward()
    tensors = out.logits + list(out.fused.values()) + out.boxes + out.crops + out.features
    assert all(torch.isfinite(t).all() for t in tensors)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Every APN's first layer gets a gradient (the last layer is small-random, not zero).
    assert all(apn.fc1.weight.grad.abs().sum() > 0 for apn in model.apns)


def test_scales_have_same_initial_weights_separate_parameters():
    model = _model("tiny", 3, 64, 32)
    first, second = model.backbones[0].state_dict(), model.backbones[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert model.backbones[0].body[0][0].weight is not model.backbones[1].body[0][0].weight


@pytest.mark.parametrize("num_scales", [2, 4])
def test_param_groups_disjoint_and_complete(num_scales):
    model = _model("tiny", num_scales, 64, 32)
    groups = model.param_groups()
    assert set(groups) == {"cls", "apn"}
    cls_ids, apn_ids = [id(p) for p in groups["cls"]], [id(p) for p in groups["apn"]]
    assert len(set(cls_ids)) == len(cls_ids) and len(set(apn_ids)) == len(apn_ids)
    assert not set(cls_ids) & set(apn_ids)
    assert set(cls_ids) | set(apn_ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.apns.parameters()} == set(apn_ids)
    fusion_ids = {id(p) for p in model.fusion_parameters()}
    assert fusion_ids == {id(p) for p in model.fusion.parameters()} and fusion_ids <= set(cls_ids)
    assert len(model.fusion_parameters()) == 2 * (num_scales - 1)


@pytest.mark.parametrize("num_scales", [1, 5])
def test_num_scales_validated(num_scales):
    with pytest.raises(ValueError, match="num_scales"):
        RACNN("tiny", num_classes=3, num_scales=num_scales)


def test_from_config():
    cfg = SimpleNamespace(
        backbone="tiny",
        pretrained=None,
        num_classes=7,
        num_scales=2,
        input_size=64,
        zoom_size=48,
        min_side=0.5,
        apn_pool=2,
        apn_hidden=8,
        mask_k=5.0,
    )
    model = RACNN.from_config(cfg)
    assert (model.num_scales, model.num_classes, model.input_size, model.zoom_size) == (2, 7, 64, 48)
    assert model.mask_k == 5.0 and model.apns[0].min_side == 0.5 and model.apns[0].fc1.out_features == 8
    out = model(torch.randn(1, 3, 64, 64))
    assert out.crops[1].shape == (1, 3, 48, 48) and out.logits[1].shape == (1, 7)


def _check_valid(boxes: torch.Tensor, min_side: float) -> None:
    assert torch.isfinite(boxes).all()
    tx, ty, tl = boxes.unbind(-1)
    eps = 1e-6
    assert (2 * tl >= min_side - eps).all() and (tl <= 0.5 + eps).all()
    for centre in (tx, ty):
        assert (centre - tl >= -eps).all() and (centre + tl <= 1 + eps).all()


@pytest.mark.parametrize("min_side", [1 / 3, 0.1, 1.0])
def test_apn_boxes_valid_for_extreme_inputs(min_side):
    values = torch.tensor([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4])
    raw = torch.cartesian_prod(values, values, values)  # (343, 3)
    boxes = apn_boxes(raw, min_side)
    _check_valid(boxes, min_side)
    # The extremes are reached: the smallest and the largest side, boxes touching either border.
    torch.testing.assert_close(boxes[:, 2].min(), torch.tensor(min_side / 2))
    torch.testing.assert_close(boxes[:, 2].max(), torch.tensor(0.5))
    torch.testing.assert_close(
        apn_boxes(torch.tensor([[-1e4, 1e4, -1e4]]), min_side),
        torch.tensor([[min_side / 2, 1 - min_side / 2, min_side / 2]]),
    )


def test_apn_module_boxes_valid_when_last_layer_explodes():
    apn = APN(in_channels=4, pool=2, hidden=8, min_side=0.25)
    feature_map = torch.randn(6, 4, 5, 5)
    extremes = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4], [1e4] * 3, [-1e4] * 3, [0.0] * 3, [3.0, -7, 1]])
    handle = apn.fc2.register_forward_hook(lambda module, args, output: extremes)
    boxes = apn(feature_map)
    handle.remove()
    _check_valid(boxes, 0.25)
    torch.testing.assert_close(boxes[4], torch.tensor([0.5, 0.5, 0.125 + 0.375 / 2]))


def test_ranking_loss_gradient_reaches_apn_through_crop():
    model = _model("tiny", 3, 64, 32)
    target = torch.tensor([0, 3])
    out = model(torch.randn(2, 3, 64, 64))
    margin = 1.0  # large, so the hinge is active whatever the random logits
    loss = sum(ranking_losses(out.logits, target, margin=margin).values())
    assert loss > 0
    loss.backward()
    for apn in model.apns:
        assert apn.fc2.weight.grad.abs().sum() > 0 and apn.fc1.weight.grad.abs().sum() > 0
    model.zero_grad()
    out = model(torch.randn(2, 3, 64, 64))
    out.boxes[0].retain_grad()
    ranking_losses(out.logits, target, margin=margin)["rank2"].backward()
    assert out.boxes[0].grad.abs().sum() > 0  # p_t(3) depends on box 1 through both crops


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace:FutureWarning")
def test_forward_traces_without_data_dependent_control_flow():
    class Flat(torch.nn.Module):  # what an exporter does: the output dataclass as a flat tuple
        def __init__(self):
            super().__init__()
            self.model = _model("tiny", 3, 64, 32)

        def forward(self, images):
            out = self.model(images)
            return (*out.logits, *out.fused.values(), *out.boxes_in_image, *out.crops[1:])

    flat = Flat().eval()
    traced = torch.jit.trace(flat, torch.randn(2, 3, 64, 64))
    images = 3 * torch.randn(4, 3, 64, 64)  # another batch size, other boxes
    for got, expected in zip(traced(images), flat(images), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("num_scales", [2, 3])
def test_fusion_heads_start_as_the_sum_of_the_scales_classifiers(num_scales):
    torch.manual_seed(0)
    model = RACNN("tiny", 5, num_scales, input_size=32, zoom_size=32, apn_pool=2, apn_hidden=8).eval()
    for classifier in model.classifiers:  # biases too, so that the bias sum is checked
        torch.nn.init.normal_(classifier.bias)
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(image)
        model.init_fusion_from_classifiers(before.features)  # one image: its norms are the batch means, exact
        after = model(image)
    for n in range(2, num_scales + 1):
        expected = sum(after.logits[:n])
        torch.testing.assert_close(after.fused[model.fusion_name(n)], expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(before.fused[model.fusion_name(n)], expected, atol=1e-2)
    # On a batch the norms vary: the heads stay close to the sum and rank the classes alike.
    batch = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        out = model(batch)
    fused, summed = out.fused[model.fusion_name(num_scales)], sum(out.logits)
    assert (fused.argmax(1) == summed.argmax(1)).float().mean() >= 0.75


def test_fixed_side_turns_the_attention_off_with_centred_boxes():
    model = RACNN(backbone="tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=32, apn_hidden=8,
                  fixed_side=0.5)  # fmt: skip
    out = model(torch.rand(2, 3, 64, 64))
    for boxes in out.boxes:
        assert torch.equal(boxes, torch.tensor([[0.5, 0.5, 0.25]] * 2))
    assert torch.allclose(out.boxes_in_image[1], torch.tensor([[0.5, 0.5, 0.125]] * 2))  # a centred zoom of a zoom
    sum(z.sum() for z in out.logits).backward()
    assert all(p.grad is None for p in model.apns.parameters())  # nothing for an APN to learn
    learnt = RACNN(backbone="tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=32, apn_hidden=8)
    assert learnt.state_dict().keys() == model.state_dict().keys()  # same checkpoints either way


def test_fixed_side_per_apn():
    model = RACNN(backbone="tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=32, apn_hidden=8,
                  fixed_side=[0.5, 0.8])  # fmt: skip
    out = model(torch.rand(2, 3, 64, 64))
    assert torch.equal(out.boxes[0], torch.tensor([[0.5, 0.5, 0.25]] * 2))
    assert torch.equal(out.boxes[1], torch.tensor([[0.5, 0.5, 0.4]] * 2))
    assert torch.allclose(out.boxes_in_image[1], torch.tensor([[0.5, 0.5, 0.2]] * 2))  # 0.8 of a 0.5 zoom
    with pytest.raises(ValueError, match="one per APN"):
        RACNN(backbone="tiny", num_classes=3, num_scales=3, input_size=64, zoom_size=32, fixed_side=[0.5])


def test_backbone_that_cannot_take_the_sizes_is_refused_when_built():
    with pytest.raises(
        ValueError, match=r"timm:vit_tiny_patch16_224 cannot take model\.input_size=448 .*img_size: 448"
    ):
        RACNN("timm:vit_tiny_patch16_224", num_classes=3, input_size=448, zoom_size=224, apn_hidden=8)
    with pytest.raises(ValueError, match=r"cannot take model\.zoom_size=32 .*dynamic_img_size"):
        RACNN("timm:vit_tiny_patch16_224", 3, 2, 64, 32, apn_hidden=8, backbone_kwargs={"img_size": 64})


def test_vit_backbone_with_kwargs_runs_at_both_sizes():
    torch.manual_seed(0)
    model = RACNN("timm:vit_tiny_patch16_224", 3, 2, input_size=64, zoom_size=32, apn_pool=2, apn_hidden=8,
                  backbone_kwargs={"dynamic_img_size": True})  # fmt: skip
    out = model(torch.randn(2, 3, 64, 64))
    assert out.feature_maps[0].shape == (2, 192, 4, 4) and out.feature_maps[1].shape == (2, 192, 2, 2)
    assert out.crops[1].shape == (2, 3, 32, 32) and out.fused["1+2"].shape == (2, 3)


def test_apn_channels_reduce_the_fc_and_keep_old_checkpoints_keys():
    plain = RACNN(num_classes=3, num_scales=2, input_size=32, zoom_size=32, apn_pool=4, apn_hidden=16)
    reduced = RACNN(num_classes=3, num_scales=2, input_size=32, zoom_size=32, apn_pool=4, apn_hidden=16, apn_channels=8)
    channels = plain.backbones[0].out_channels
    assert plain.apns[0].fc1.in_features == channels * 16
    assert reduced.apns[0].fc1.in_features == 8 * 16
    assert reduced.apns[0].reduce[0].weight.shape == (8, channels, 1, 1)
    # without a reduction the state dict has exactly the keys it had before apn_channels existed
    assert not [k for k in plain.state_dict() if ".reduce." in k]
    out = reduced(torch.randn(2, 3, 32, 32))
    assert out.boxes[0].shape == (2, 3) and out.logits[1].shape == (2, 3)
    out.boxes[0].sum().backward()
    assert reduced.apns[0].reduce[0].weight.grad.abs().sum() > 0  # the reduction learns with the APN
    with pytest.raises(ValueError, match="channels"):
        APN(channels, channels=-1)
