"""antialiased_crop (zooms from a high-resolution source, without aliasing) and RACNN.forward(images, source)."""

from __future__ import annotations

import pytest
import torch

from racnn.modeling.crop import antialiased_crop, attention_crop, image_pyramid
from racnn.modeling.losses import ranking_losses
from racnn.modeling.model import RACNN

pytestmark = pytest.mark.usefixtures("one_thread")


def _checker(size: int) -> torch.Tensor:
    """A 1-pixel checkerboard of 0 and 1, ``(1, 1, size, size)``: the finest pattern an image can hold."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows + cols) % 2).to(torch.float64)[None, None]


def test_pyramid_levels_halve_and_average():
    images = torch.rand(2, 3, 16, 10, dtype=torch.float64)
    pyramid = image_pyramid(images, 3)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(16, 10), (8, 5), (4, 3), (2, 2)]
    torch.testing.assert_close(pyramid[1][..., 0, 0], images[..., :2, :2].mean(dim=(-2, -1)))
    assert torch.allclose(pyramid[2].mean(), images.mean(), atol=0.05)  # averages, not samples


def test_magnifying_boxes_give_attention_crop_exactly():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 40, 40, generator=gen, dtype=torch.float64)
    # Sides of 12, 16 and 8 px for a 16 px output: no box covers more pixels than the output has.
    boxes = torch.tensor([[0.5, 0.5, 0.15], [0.3, 0.6, 0.2], [0.8, 0.2, 0.1]], dtype=torch.float64)
    assert torch.equal(antialiased_crop(images, boxes, 16, k=10.0), attention_crop(images, boxes, 16, k=10.0))
    # An image no larger than the output: a single level, attention_crop again.
    assert torch.equal(antialiased_crop(images, boxes, 40, k=3.0), attention_crop(images, boxes, 40, k=3.0))


def test_checkerboard_averages_to_grey_where_plain_sampling_aliases():
    source = _checker(64)
    # The whole image shifted by half a pixel: every plain bilinear sample lands on the centre of an even pixel,
    # so the 8x8 output is one colour of the checkerboard (a completely false picture of it).
    boxes = torch.tensor([[32.5 / 64, 32.5 / 64, 0.5]], dtype=torch.float64)
    plain = attention_crop(source, boxes, 8, k=100.0)
    smooth = antialiased_crop(source, boxes, 8, k=100.0)
    assert (plain - 0.5).abs().min() > 0.45
    # The pattern's mean grey; the last row and column also weigh in the zeros beyond the image's border.
    torch.testing.assert_close(smooth[..., :-1, :-1], torch.full_like(smooth[..., :-1, :-1], 0.5), atol=1e-9, rtol=0)
    assert (smooth - 0.5).abs().max() < 0.07


def test_fine_stripes_do_not_turn_into_a_coarse_pattern():
    # Vertical lines every 3 px (mean 1/3), read with a box of 72 px into 10 output pixels: 7.2 px per sample.
    cols = torch.arange(90)
    source = (cols % 3 == 0).to(torch.float64).expand(1, 1, 90, 90).contiguous()
    boxes = torch.tensor([[0.5, 0.5, 0.4]], dtype=torch.float64)
    plain = attention_crop(source, boxes, 10, k=100.0)[0, 0]
    smooth = antialiased_crop(source, boxes, 10, k=100.0)[0, 0]
    assert plain.std() > 0.2  # moire: bright and dark columns that are not in the picture
    assert smooth.std() < plain.std() / 4
    assert (smooth.mean() - 1 / 3).abs() < 0.05


def test_mask_steepness_follows_k_side():
    """With k_side, the mask of a crop from a 4x larger copy is the mask of the crop from the image itself."""
    ones = torch.ones(1, 1, 32, 32, dtype=torch.float64)
    big = torch.ones(1, 1, 128, 128, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.25]], dtype=torch.float64)  # 16 px of the image, 64 px of the copy
    small_mask = attention_crop(ones, boxes, 16, k=0.5)
    big_mask = antialiased_crop(big, boxes, 16, k=0.5, k_side=32)
    torch.testing.assert_close(big_mask, small_mask, atol=1e-12, rtol=0)
    assert not torch.allclose(antialiased_crop(big, boxes, 16, k=0.5), small_mask, atol=1e-3)


def test_gradcheck_images_and_boxes():
    # Sides of 12.4 and 8.8 px for a 4 px output: fractional levels 1.63 and 1.14 of 3, so the gradient also
    # runs through the blend of two levels; k = 1 keeps the mask smooth on gradcheck's scale.
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2, 2, 20, 20, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.45, 0.55, 0.31], [0.6, 0.4, 0.22]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda im, bx: antialiased_crop(im, bx, 4, k=1.0), (images, boxes))


def test_side_gradient_includes_the_level_blend():
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(1, 1, 64, 64, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.3]], dtype=torch.float64, requires_grad=True)
    antialiased_crop(images, boxes, 8, k=1.0).sum().backward()
    assert torch.isfinite(boxes.grad).all() and boxes.grad[0, 2] != 0


# -- the model -------------------------------------------------------------------------------------------------


def _model(num_scales: int = 3) -> RACNN:
    torch.manual_seed(0)
    return RACNN("tiny", 4, num_scales, input_size=32, zoom_size=32, apn_pool=2, apn_hidden=16).eval()


def test_forward_without_source_is_the_plain_crop_of_the_input():
    model = _model()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model(images)
    for s in range(1, model.num_scales):
        expected = attention_crop(images, out.boxes_in_image[s - 1], model.zoom_size, k=model.mask_k)
        assert torch.equal(out.crops[s], expected)
    again = model(images, None)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, again.logits, strict=True))
    # A source at the input's own resolution, zooms that only magnify: nothing changes, bit for bit.
    same = model(images, images.clone())
    assert all(torch.equal(a, b) for a, b in zip(out.crops, same.crops, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(out.logits, same.logits, strict=True))


def test_forward_with_source_zooms_into_the_source():
    model = _model()
    gen = torch.Generator().manual_seed(2)
    source = torch.randn(2, 3, 128, 128, generator=gen)
    images = torch.nn.functional.interpolate(source, size=32, mode="area")  # the same framing, 4x coarser
    out = model(images, source)
    for s in range(1, model.num_scales):
        expected = antialiased_crop(source, out.boxes_in_image[s - 1], 32, k=model.mask_k, k_side=32)
        torch.testing.assert_close(out.crops[s], expected, atol=0, rtol=0)
        plain = attention_crop(images, out.boxes_in_image[s - 1], 32, k=model.mask_k)
        assert not torch.allclose(out.crops[s], plain, atol=1e-2)  # the source's detail, not the input's
    assert torch.equal(out.crops[0], images)


def test_ranking_loss_trains_the_apns_through_the_source_crop():
    model = _model().train()
    gen = torch.Generator().manual_seed(5)
    source = torch.randn(4, 3, 96, 96, generator=gen)
    images = torch.nn.functional.interpolate(source, size=32, mode="area")
    out = model(images, source)
    loss = sum(ranking_losses(out.logits, torch.arange(4) % 4, margin=1.0).values())  # every pair's hinge active
    loss.backward()
    for apn in model.apns:
        grad = apn.fc2.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_source_that_does_not_match_the_images_is_refused():
    model = _model(2)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="source must have shape"):
        model(images, torch.randn(3, 3, 64, 64))
    with pytest.raises(ValueError, match="not framed like images"):
        model(images, torch.randn(2, 3, 64, 96))
