"""attention_crop against slow, obvious references; gradients; box helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from racnn.modeling.crop import AttentionCrop, attention_crop, boxes_to_xyxy, compose_boxes, xyxy_to_boxes


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _mask_1d(x1: float, side: float, n: int, k: float) -> list[float]:
    """Boxcar mask h(x - x1) - h(x - x2) at the n output sample points, in plain Python floats."""
    xs = [x1 + (j + 0.5) * side / n for j in range(n)]
    return [_sigmoid(k * (x - x1)) - _sigmoid(k * (x - (x1 + side))) for x in xs]


def _box_from_corner(x1: float, y1: float, side: float, height: int, width: int) -> list[float]:
    short = min(height, width)
    return [(x1 + side / 2) / width, (y1 + side / 2) / height, side / (2 * short)]


def _slice_reference(images, xyxy_int, out_size, k):
    """Per sample: zero-pad, slice the box, bilinear-resize, multiply by M at the output sample points.

    F.interpolate(align_corners=False) samples the slice at the same points as the crop's convention, but it
    replicates the slice's border pixels where attention_crop sees the neighbouring image pixels, so the two
    agree only when no sample point falls outside the slice's outer pixel centres: boxes at least as large as
    the output (zooming out or 1:1). Zooming in is covered by the hand-written bilinear reference below.
    """
    pad = 64
    padded = F.pad(images, (pad, pad, pad, pad))
    out_h, out_w = out_size
    result = []
    for image, (x1, y1, side) in zip(padded, xyxy_int, strict=True):
        region = image[:, y1 + pad : y1 + pad + side, x1 + pad : x1 + pad + side]
        zoomed = F.interpolate(region[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        mask = torch.tensor(_mask_1d(y1, side, out_h, k), dtype=images.dtype)[:, None] * torch.tensor(
            _mask_1d(x1, side, out_w, k), dtype=images.dtype
        )
        result.append(zoomed * mask)
    return torch.stack(result)


@pytest.mark.parametrize("k", [10.0, 0.5])
@pytest.mark.parametrize("image_size", [(32, 32), (30, 41)])
def test_matches_slice_reference_integer_boxes(k, image_size):
    height, width = image_size
    out_size = (7, 6)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 2, height, width, generator=gen, dtype=torch.float64)
    # Integer corners; sides >= the output size; the last three touch or cross the border.
    corners = [(3, 4, 12), (10, 2, 17), (0, 0, 8), (width - 9, height - 9, 9), (-5, 7, 14), (width - 10, -4, 16)]
    boxes = torch.tensor([_box_from_corner(x1, y1, s, height, width) for x1, y1, s in corners], dtype=torch.float64)
    got = attention_crop(images, boxes, out_size, k=k)
    expected = _slice_reference(images, corners, out_size, k)
    assert got.shape == (6, 2, 7, 6)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def _hand_bilinear_reference(images, boxes, out_size, k):
    """Loops over output pixels: bilinear interpolation by hand, zeros outside, times the mask."""
    batch, channels, height, width = images.shape
    short = min(height, width)
    out_h, out_w = out_size
    out = torch.zeros(batch, channels, out_h, out_w, dtype=torch.float64)

    def pixel(b, c, row, col):
        return float(images[b, c, row, col]) if 0 <= row < height and 0 <= col < width else 0.0

    for b in range(batch):
        tx, ty, tl = (float(v) for v in boxes[b])
        x1, y1, side = tx * width - tl * short, ty * height - tl * short, 2 * tl * short
        mask_x, mask_y = _mask_1d(x1, side, out_w, k), _mask_1d(y1, side, out_h, k)
        for i in range(out_h):
            for j in range(out_w):
                # Continuous pixel coordinate -> index coordinate (pixel p's centre p + 0.5 has index p).
                col = x1 + (j + 0.5) * side / out_w - 0.5
                row = y1 + (i + 0.5) * side / out_h - 0.5
                c0, r0 = math.floor(col), math.floor(row)
                wc, wr = col - c0, row - r0
                for c in range(channels):
                    value = (
                        (1 - wr) * (1 - wc) * pixel(b, c, r0, c0)
                        + (1 - wr) * wc * pixel(b, c, r0, c0 + 1)
                        + wr * (1 - wc) * pixel(b, c, r0 + 1, c0)
                        + wr * wc * pixel(b, c, r0 + 1, c0 + 1)
                    )
                    out[b, c, i, j] = value * mask_y[i] * mask_x[j]
    return out


@pytest.mark.parametrize("k", [10.0, 1.0])
@pytest.mark.parametrize("out_size", [(5, 5), (4, 7)])
def test_matches_hand_bilinear_reference(k, out_size):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(5, 2, 12, 10, generator=gen, dtype=torch.float64)
    boxes = torch.tensor(
        [
            [0.5, 0.5, 0.5],  # the whole square part of the image
            [0.37, 0.61, 0.123],  # small, inside: zooms in
            [0.05, 0.1, 0.3],  # crosses the top-left border
            [0.93, 0.88, 0.21],  # crosses the bottom-right border
            [0.5, 0.5, 0.7],  # larger than the image
        ],
        dtype=torch.float64,
    )
    got = attention_crop(images, boxes, out_size, k=k)
    expected = _hand_bilinear_reference(images, boxes, out_size, k)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_whole_image_box_is_identity():
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.5]] * 2, dtype=torch.float64)
    # The outermost samples lie half a pixel inside the box, where the mask is sigmoid(k / 2) = 1 for k = 100.
    torch.testing.assert_close(attention_crop(images, boxes, 16, k=100.0), images, atol=1e-12, rtol=0)


def test_gradcheck_images_and_boxes():
    # Bilinear interpolation is piecewise linear in the sample positions, with kinks where a sample crosses a
    # pixel centre. Random boxes put every sample a generic distance from a centre, far more than gradcheck's
    # eps = 1e-6, so the finite differences see a smooth function. k = 1 keeps the mask smooth on that scale.
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 2, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.43, 0.57, 0.31], [0.71, 0.36, 0.22]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda im, bx: attention_crop(im, bx, (4, 5), k=1.0), (images, boxes))
    assert torch.autograd.gradgradcheck(lambda bx: attention_crop(images.detach(), bx, 3, k=1.0), (boxes,))


@pytest.mark.parametrize("axis", ["x", "y"])
def test_gradient_moves_box_towards_bright_patch(axis):
    size = 48
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    # A broad bright blob at (36, 24) (or (24, 36) for y) on a black image; the box starts centred at 24.
    along = torch.exp(-(((coords - 36) / 6) ** 2))
    across = torch.exp(-(((coords - 24) / 6) ** 2))
    image = across[:, None] * along[None, :] if axis == "x" else along[:, None] * across[None, :]
    images = image.expand(1, 3, size, size)
    boxes = torch.tensor([[0.5, 0.5, 0.2]], requires_grad=True)
    start = boxes.detach().clone()
    optimiser = torch.optim.SGD([boxes], lr=0.01)
    for _ in range(5):
        optimiser.zero_grad()
        (-attention_crop(images, boxes, 16).mean()).backward()
        optimiser.step()
    moved = boxes.detach() - start
    moving, fixed = (0, 1) if axis == "x" else (1, 0)
    assert moved[0, moving] > 1e-3
    assert abs(moved[0, fixed]) < 0.1 * moved[0, moving]


@pytest.mark.parametrize(
    ("image_dtype", "box_dtype", "atol"),
    [
        (torch.float32, torch.float32, 1e-5),
        (torch.bfloat16, torch.float32, 2e-2),
        (torch.bfloat16, torch.bfloat16, 2e-2),
        (torch.float64, torch.float32, 1e-6),
    ],
)
def test_dtypes_follow_images(image_dtype, box_dtype, atol):
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 40, 40, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[0.4, 0.6, 0.2], [0.5, 0.5, 0.45], [0.3, 0.3, 0.25]], dtype=torch.float64)
    expected = attention_crop(images, boxes.to(box_dtype).double(), 12)
    got = attention_crop(images.to(image_dtype).requires_grad_(), boxes.to(box_dtype).requires_grad_(), 12)
    assert got.dtype == image_dtype
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=0)
    got.float().sum().backward()


def test_module_matches_function():
    images, boxes = torch.rand(2, 3, 20, 20), torch.tensor([[0.4, 0.5, 0.3], [0.6, 0.4, 0.2]])
    module = AttentionCrop((6, 8), k=3.0)
    assert torch.equal(module(images, boxes), attention_crop(images, boxes, (6, 8), k=3.0))
    assert "out_size=(6, 8)" in repr(module)


@pytest.mark.parametrize(
    ("images", "boxes", "out_size", "match"),
    [
        (torch.rand(2, 3, 8), torch.rand(2, 3), 4, "images must have shape"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 4), 4, r"boxes must have shape \(B, 3\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(3, 3), 4, "2 images but 3 boxes"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3), 0, "out_size"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3), (4, 4, 4), "out_size"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.rand(2, 3), 4, "floating-point"),
    ],
)
def test_invalid_inputs_raise(images, boxes, out_size, match):
    with pytest.raises(ValueError, match=match):
        attention_crop(images, boxes, out_size)


@pytest.mark.parametrize("image_size", [None, (30, 50), (64, 48)])
def test_xyxy_round_trip(image_size):
    boxes = torch.tensor([[0.5, 0.5, 0.25], [0.3, 0.7, 0.1]], dtype=torch.float64)
    xyxy = boxes_to_xyxy(boxes, image_size)
    torch.testing.assert_close(xyxy_to_boxes(xyxy, image_size), boxes)
    if image_size == (30, 50):
        # x1 = 0.5 * 50 - 0.25 * 30, y1 = 0.5 * 30 - 0.25 * 30; the box is square in pixels.
        torch.testing.assert_close(xyxy[0], torch.tensor([17.5, 7.5, 32.5, 22.5], dtype=torch.float64))


def test_compose_boxes_known_values():
    outer = torch.tensor([[0.5, 0.5, 0.25]])  # crop covers [0.25, 0.75]^2
    inner = torch.tensor([[0.25, 0.75, 0.25]])  # quarter-side box in the crop's top-left... bottom-left
    composed = compose_boxes([outer, inner])
    assert composed[0] is outer
    torch.testing.assert_close(composed[1], torch.tensor([[0.375, 0.625, 0.125]]))
    whole = torch.tensor([[0.5, 0.5, 0.5]])
    torch.testing.assert_close(compose_boxes([outer, whole])[1], outer)


@pytest.mark.parametrize("image_size", [(48, 48), (40, 56)])
def test_composed_crop_equals_recursive_crop(image_size):
    # On a linear ramp, bilinear sampling is exact between the outer pixel centres, so the crops' pixel values
    # are their sample coordinates: the recursive crop and the composed crop must agree exactly.
    height, width = image_size
    ramp_x = (torch.arange(width, dtype=torch.float64) + 0.5).expand(height, width)
    ramp_y = (torch.arange(height, dtype=torch.float64) + 0.5)[:, None].expand(height, width)
    images = torch.stack([ramp_x, ramp_y])[None].repeat(2, 1, 1, 1)
    box0 = torch.tensor([[0.5, 0.45, 0.3], [0.55, 0.6, 0.35]], dtype=torch.float64)
    box1 = torch.tensor([[0.4, 0.6, 0.3], [0.55, 0.5, 0.25]], dtype=torch.float64)
    box2 = torch.tensor([[0.5, 0.45, 0.35], [0.6, 0.4, 0.3]], dtype=torch.float64)
    k, zoom = 1e3, 24  # k large: the mask is exactly 1 at every sample point
    crop1 = attention_crop(images, box0, zoom, k=k)
    crop2 = attention_crop(crop1, box1, zoom, k=k)
    crop3 = attention_crop(crop2, box2, zoom, k=k)
    composed = compose_boxes([box0, box1, box2], image_size)
    torch.testing.assert_close(attention_crop(images, composed[1], zoom, k=k), crop2, atol=1e-9, rtol=0)
    torch.testing.assert_close(attention_crop(images, composed[2], zoom, k=k), crop3, atol=1e-9, rtol=0)
