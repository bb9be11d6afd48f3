"""The built-in synthetic fine-grained set: determinism, ground truth, and that zooming is what it takes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from racnn.data import SyntheticFineGrained, build_dataset, build_transforms


def test_same_seed_same_tensors_in_any_order():
    a = SyntheticFineGrained(20, seed=3)
    b = SyntheticFineGrained(20, seed=3)
    forward = [a[i][0] for i in range(20)]
    backward = [b[i][0] for i in reversed(range(20))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward, strict=True))
    assert not torch.equal(forward[0], forward[1])
    assert not torch.equal(SyntheticFineGrained(20, seed=4)[0][0], forward[0])
    assert not torch.equal(SyntheticFineGrained(20, seed=3, split="test")[0][0], forward[0])
    # a longer data set with the same seed starts with the same samples
    assert torch.equal(SyntheticFineGrained(50, seed=3)[7][0], forward[7])


def test_determinism_across_dataloader_workers_and_cache():
    dataset = SyntheticFineGrained(12, num_classes=4, image_size=48, seed=1, cache=True)
    images, labels = next(iter(DataLoader(dataset, batch_size=12, num_workers=2)))
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(12)]))
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(12)]))  # from the cache now
    assert labels.tolist() == dataset.targets == [i % 4 for i in range(12)]


def test_output_range_transform_and_factory():
    dataset = build_dataset("synthetic", None, "train", num_samples=8, num_classes=5, image_size=64)
    assert isinstance(dataset, SyntheticFineGrained) and dataset.name == "synthetic" and dataset.root is None
    assert len(dataset) == 8 and len(dataset.classes) == 5 and dataset.classes[4] == "green-magenta horizontal"
    image, label = dataset[6]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and label == 1
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0 and float(image.min()) < -0.5
    raw = dataset.render(6)
    assert torch.equal((raw - 0.5) / 0.5, image)
    assert torch.equal(torch.round(raw * 255) / 255, raw)  # 8-bit levels, like a decoded photo
    seen = []
    with_transform = SyntheticFineGrained(8, num_classes=5, image_size=64, transform=lambda x: seen.append(x) or 0)
    assert with_transform[6] == (0, 1) and torch.equal(seen[0], raw)
    augmented = SyntheticFineGrained(4, transform=build_transforms("train", 80, (0.5,) * 3, (0.5,) * 3))
    assert augmented[0][0].shape == (3, 80, 80)
    assert len(build_dataset("synthetic", None, "test")) == 500


def test_invalid_arguments_are_explained():
    with pytest.raises(ValueError, match="num_classes must be between 2 and 12, got 13"):
        SyntheticFineGrained(10, num_classes=13)
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticFineGrained(10, split="holdout")
    with pytest.raises(IndexError, match="index 10 out of range for 10 samples"):
        SyntheticFineGrained(10)[10]


def test_ground_truth_boxes():
    dataset = SyntheticFineGrained(200, image_size=96, seed=5)
    objects, details = dataset.object_boxes(), dataset.detail_boxes()
    assert objects.shape == details.shape == (200, 4)
    assert (objects >= 0).all() and (objects <= 1).all()
    # the detail lies on the object, and is small: 1 % to 4 % of the image (disc), its box under 5 %
    assert (details[:, :2] >= objects[:, :2] - 1e-6).all() and (details[:, 2:] <= objects[:, 2:] + 1e-6).all()
    areas = torch.tensor([dataset.sample_info(i).detail_area for i in range(200)])
    assert float(areas.min()) >= 0.01 and float(areas.max()) <= 0.04
    box_areas = (details[:, 2] - details[:, 0]) * (details[:, 3] - details[:, 1])
    assert float(box_areas.max()) < 0.05
    object_sides = torch.maximum(objects[:, 2] - objects[:, 0], objects[:, 3] - objects[:, 1])
    assert float(object_sides.min()) > 0.25 and float(object_sides.max()) < 0.6
    info = dataset.sample_info(13)
    assert info.index == 13 and info.label == dataset.targets[13] == 13 % 8
    # the head really is drawn where the detail box says: its colours differ most from the mean there
    image = dataset.render(13)
    x1, y1, x2, y2 = (round(v * 96) for v in info.detail_box)
    centre = image[:, (y1 + y2) // 2 - 2 : (y1 + y2) // 2 + 2, (x1 + x2) // 2 - 2 : (x1 + x2) // 2 + 2]
    assert float(centre.std(dim=(1, 2)).max()) > 0.2  # stripes: strong variation inside the disc


def _decode_detail(image: torch.Tensor, box: tuple[float, ...]) -> int:
    """Reads the class from the detail alone: colour pair from the principal colour axis, orientation from the
    structure tensor of the stripes."""
    size = image.shape[-1]
    x1, y1, x2, y2 = (v * size for v in box)
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    window = image[:, int(cy - r) : int(cy + r) + 1, int(cx - r) : int(cx + r) + 1].double()
    ys, xs = torch.meshgrid(
        torch.arange(window.shape[1]) + int(cy - r) + 0.5,
        torch.arange(window.shape[2]) + int(cx - r) + 0.5,
        indexing="ij",
    )
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 < (0.7 * r) ** 2
    colours = window[:, inside].T - window[:, inside].T.mean(0)
    axis = torch.linalg.svd(colours, full_matrices=False).Vh[0]  # e.g. red-cyan: +-(1, -1, -1)
    signs = torch.sign(axis)
    pair = int(torch.argmax((signs != signs.sum().sign()).int()))  # the channel whose sign is the odd one
    field = torch.einsum("c,chw->hw", axis, window)
    gy, gx = torch.gradient(field)
    inner = inside[1:-1, 1:-1]
    gx, gy = gx[1:-1, 1:-1][inner], gy[1:-1, 1:-1][inner]
    gradient_angle = 0.5 * math.atan2(float(2 * (gx * gy).sum()), float((gx * gx).sum() - (gy * gy).sum()))
    stripe_angle = math.degrees(gradient_angle) + 90.0
    orientation = round(stripe_angle / 45.0) % 4
    return orientation + 4 * pair


def test_label_is_recoverable_from_the_detail_alone():
    dataset = SyntheticFineGrained(96, num_classes=12, seed=11, split="test")
    decoded = [_decode_detail(dataset.render(i), dataset.sample_info(i).detail_box) for i in range(len(dataset))]
    accuracy = np.mean(np.array(decoded) == np.array(dataset.targets))
    assert accuracy >= 0.95, accuracy


def _coarse_and_zoomed(dataset: SyntheticFineGrained, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole image downsampled to ``side``, and the ground-truth object region resized to ``side``."""
    images = torch.stack([dataset.render(i) for i in range(len(dataset))])
    coarse = F.interpolate(images, size=side, mode="bilinear", antialias=True, align_corners=False)
    size, zoomed = dataset.image_size, []
    for i in range(len(dataset)):
        x1, y1, x2, y2 = dataset.sample_info(i).object_box
        crop = images[i : i + 1, :, int(y1 * size) : math.ceil(y2 * size), int(x1 * size) : math.ceil(x2 * size)]
        zoomed.append(F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
    return (coarse - 0.5) / 0.5, (torch.cat(zoomed) - 0.5) / 0.5, torch.tensor(dataset.targets)


def _train_and_score(train_x, train_y, test_x, test_y, num_classes: int, epochs: int = 6) -> float:
    torch.manual_seed(0)
    layers = []
    for c_in, c_out in ((3, 8), (8, 16), (16, 32)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_x), generator=order).split(64):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(test_x).argmax(1) == test_y).float().mean())


@pytest.mark.slow
def test_zoomed_object_beats_the_coarse_image(one_thread):
    """A small CNN that sees only the coarse image (96 -> 32 px) must do clearly worse than the same CNN on the
    ground-truth object region zoomed to 32 px: the class lives in a detail that only survives zooming."""
    num_classes = 4
    train = _coarse_and_zoomed(SyntheticFineGrained(600, num_classes=num_classes, seed=1, split="train"), 32)
    test = _coarse_and_zoomed(SyntheticFineGrained(300, num_classes=num_classes, seed=1, split="test"), 32)
    coarse = _train_and_score(train[0], train[2], test[0], test[2], num_classes)
    zoomed = _train_and_score(train[1], train[2], test[1], test[2], num_classes)
    assert zoomed >= 0.8, (coarse, zoomed)
    assert zoomed - coarse >= 0.15, (coarse, zoomed)


def test_two_details_mode_splits_the_class_between_two_far_apart_discs():
    dataset = SyntheticFineGrained(60, num_classes=12, image_size=64, seed=4, two_details=True)
    default = SyntheticFineGrained(60, num_classes=12, image_size=64, seed=4)
    assert dataset.classes[5] == "green-magenta tail, diagonal-down head"  # tail: colour pair c // 4; head: c % 4
    assert torch.equal(dataset.render(3), SyntheticFineGrained(9, 12, 64, seed=4, two_details=True).render(3))
    assert not torch.equal(dataset.render(3), default.render(3))
    details = dataset.detail_boxes()
    assert details.shape == (60, 2, 4) and default.detail_boxes().shape == (60, 4)
    assert torch.equal(details[:, 0], torch.tensor([dataset.sample_info(i).detail_box for i in range(60)]))
    centres = (details[..., :2] + details[..., 2:]) / 2  # (N, 2, 2)
    objects = dataset.object_boxes()
    assert ((details[..., :2] >= objects[:, None, :2] - 1e-6) & (details[..., 2:] <= objects[:, None, 2:] + 1e-6)).all()
    # A square that holds both discs is at least this wide: far above an attention box of the recipe's 0.35.
    both = (centres[:, 0] - centres[:, 1]).abs().amax(-1) + (details[:, 0, 2] - details[:, 0, 0])
    assert both.min() > 0.35 and both.mean() > 0.5
    # The head is black and white (no hue); the tail is its class's colour pair (saturated, one channel apart).
    for i in range(12):
        image = dataset.render(i)
        head, tail = (_disc_pixels(image, box) for box in details[i])
        assert (head.amax(0) - head.amin(0)).mean() < 0.1  # grey: channels equal
        axis = torch.tensor(_PAIR_AXES[dataset.targets[i] // 4])
        assert ((tail - tail.mean(1, keepdim=True)).T @ axis).abs().mean() > 0.2  # along the pair's colour axis
    with pytest.raises(ValueError, match="two_details and detail_period are separate modes"):
        SyntheticFineGrained(4, two_details=True, detail_period=2)
    assert build_dataset("synthetic", None, "test", num_samples=4, two_details=True).two_details


_PAIR_AXES = ((1.0, -0.5, -0.5), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0))  # red-cyan, green-magenta, blue-yellow


def _disc_pixels(image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``(3, n)`` pixels well inside the disc of ``box`` (normalised xyxy)."""
    size = image.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cx, cy, r = (box[0] + box[2]) / 2 * size, (box[1] + box[3]) / 2 * size, (box[2] - box[0]) / 2 * size
    return image[:, (xs - cx) ** 2 + (ys - cy) ** 2 < (0.7 * r) ** 2]
