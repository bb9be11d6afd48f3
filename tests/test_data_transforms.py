"""Paper-style transforms and denormalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from racnn.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize


def _gradient_image(width: int = 300, height: int = 200) -> Image.Image:
    """Left-right asymmetric image: red grows with x, green with y."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))


def test_test_transform_resizes_shorter_side_then_centre_crops():
    image = _gradient_image(300, 200)
    out = build_transforms("test", 448, IMAGENET_MEAN, IMAGENET_STD)(image)
    assert out.shape == (3, 448, 448) and out.dtype == torch.float32
    # shorter side 200 -> 512, so width 300 -> 768; the centre crop keeps x in [160, 608) of 768 px
    red = denormalize(out, IMAGENET_MEAN, IMAGENET_STD)[0]
    assert abs(float(red[:, 0].mean()) - 160 / 768) < 0.01 and abs(float(red[:, -1].mean()) - 608 / 768) < 0.01
    assert torch.equal(out, build_transforms("val", 448, IMAGENET_MEAN, IMAGENET_STD)(image))


def test_normalisation_uses_the_given_mean_and_std():
    image = Image.new("RGB", (50, 40), (255, 0, 128))
    out = build_transforms("test", 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_ratio=1.25)(image)
    assert out.shape == (3, 32, 32)
    expected = torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(out, expected, atol=1e-5)
    back = denormalize(out.unsqueeze(0), (0.5,) * 3, (0.5,) * 3)
    assert back.shape == (1, 3, 32, 32) and torch.allclose(back[0, :, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))


def test_train_transform_crops_randomly_and_flips():
    image = _gradient_image(64, 64)
    flip = build_transforms("train", 64, (0, 0, 0), (1, 1, 1), resize_ratio=1.0)  # crop = whole image
    torch.manual_seed(0)
    left_columns = {round(float(flip(image)[0, :, 0].mean()), 2) for _ in range(20)}
    assert left_columns == {0.0, 1.0}  # red at the left edge: 0 unflipped, 1 flipped
    no_flip = build_transforms("train", 64, (0, 0, 0), (1, 1, 1), resize_ratio=1.0, hflip=False)
    assert {round(float(no_flip(image)[0, :, 0].mean()), 2) for _ in range(10)} == {0.0}
    crop = build_transforms("train", 40, (0, 0, 0), (1, 1, 1), resize_ratio=1.6, hflip=False)
    offsets = {round(float(crop(image)[0, 0, 0]), 3) for _ in range(20)}
    assert len(offsets) > 3 and all(crop(image).shape == (3, 40, 40) for _ in range(3))


def test_float_tensor_input_like_the_synthetic_set():
    tensor = torch.rand(3, 96, 96)
    out = build_transforms("test", 96, (0.5,) * 3, (0.5,) * 3, resize_ratio=1.0)(tensor)
    assert torch.allclose(out, (tensor - 0.5) / 0.5, atol=1e-6)  # float input is not rescaled again


def test_invalid_arguments():
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test', got 'eval'"):
        build_transforms("eval", 448, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="resize_ratio must be >= 1"):
        build_transforms("train", 448, IMAGENET_MEAN, IMAGENET_STD, resize_ratio=0.9)
    with pytest.raises(ValueError, match="expected \\(3, H, W\\) or \\(B, 3, H, W\\)"):
        denormalize(torch.zeros(2, 2), IMAGENET_MEAN, IMAGENET_STD)
