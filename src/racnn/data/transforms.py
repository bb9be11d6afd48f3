"""Paper-style preprocessing with ``torchvision.transforms.v2``.

Train: resize the shorter side to ``round(input_size * resize_ratio)`` (paper: 512 for 448), random crop
``input_size``, horizontal flip, float in [0, 1], normalise. Test: the same resize, centre crop, normalise.
The normalisation belongs to the backbone, so the caller passes ``mean`` and ``std``.

With ``source_size > 0`` every image gives two views (:class:`SourceViews`): scale 1's input and the same framing
at ``source_size``, the high-resolution source the zooms are sampled from (``RACNN.forward(images, source)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SourceViews",
    "build_transforms",
    "denormalize",
    "to_tensor",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_tensor() -> v2.Compose:
    """PIL image or uint8 tensor -> float32 tensor ``(3, H, W)`` in [0, 1]; the data sets' default transform."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def build_transforms(
    split: str,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize_ratio: float = 512 / 448,
    hflip: bool = True,
    source_size: int = 0,
) -> v2.Compose | SourceViews:
    """Builds the paper's train or test preprocessing.

    Accepts PIL images, uint8 tensors and float tensors in [0, 1] (the synthetic set's images).

    Args:
        split: ``"train"`` (random crop + flip) or ``"test"``/``"val"`` (centre crop).
        input_size: side of the square output, e.g. 448.
        mean: per-channel mean of the backbone's normalisation, e.g. :data:`IMAGENET_MEAN`.
        std: per-channel std of the backbone's normalisation, e.g. :data:`IMAGENET_STD`.
        resize_ratio: the shorter side is first resized to ``round(input_size * resize_ratio)``
            (paper: 512 / 448).
        hflip: random horizontal flip in training.
        source_size: 0, or the side of a second, high-resolution view of the same framing (at least
            ``input_size``); see :class:`SourceViews`.

    Returns:
        A transform mapping an image to a normalised float32 tensor ``(3, input_size, input_size)``; with
        ``source_size > 0`` to a pair ``(that tensor, (3, source_size, source_size))``.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if resize_ratio < 1.0:
        raise ValueError(f"resize_ratio must be >= 1 so the crop fits inside the resized image, got {resize_ratio}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if source_size and source_size < input_size:
        raise ValueError(f"source_size must be 0 or at least input_size ({input_size}), got {source_size}")
    side = source_size or input_size  # the geometry runs once, at the finest resolution asked for
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(round(side * resize_ratio), antialias=True)]
    if split == "train":
        steps.append(v2.RandomCrop(side))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps.append(v2.CenterCrop(side))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    normalize = v2.Normalize(list(mean), list(std))
    if source_size:
        return SourceViews(v2.Compose(steps), input_size, normalize)
    return v2.Compose([*steps, normalize])


class SourceViews:
    """An image -> ``(input, source)``: scale 1's input and the same framing at a higher resolution.

    The geometry (resize, random or centre crop, flip) runs once, at the source's resolution; scale 1's input is
    the source resized down to ``input_size`` (antialiased). So both views show exactly the same region, and a
    normalised position, such as an attention box, means the same place in both.

    Args:
        geometry: image -> float32 ``(3, M, M)`` in [0, 1], the source before normalisation.
        input_size: side of scale 1's input.
        normalize: the backbone's normalisation, applied to both views.
    """

    def __init__(self, geometry: v2.Compose, input_size: int, normalize: v2.Normalize) -> None:
        self.geometry, self.input_size, self.normalize = geometry, input_size, normalize

    def __call__(self, image, boxes=None):
        """``(input, source)``; given ``boxes`` (``tv_tensors.BoundingBoxes``), ``((input, source), boxes)`` with the
        boxes moved by the same geometry (in the source's pixels)."""
        source = self.geometry(image) if boxes is None else None  # (3, M, M) in [0, 1]
        if boxes is not None:
            source, boxes = self.geometry(image, boxes)
        small = source
        if source.shape[-1] != self.input_size or source.shape[-2] != self.input_size:
            small = TF.resize(source, [self.input_size, self.input_size], antialias=True)
        views = self.normalize(small), self.normalize(source)  # (3, input_size, input_size), (3, M, M)
        return views if boxes is None else (views, boxes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(geometry={self.geometry}, input_size={self.input_size}, {self.normalize})"


def denormalize(tensor: Tensor, mean: Sequence[float], std: Sequence[float], clamp: bool = True) -> Tensor:
    """Undoes :func:`build_transforms`' normalisation, for display.

    Args:
        tensor: ``(3, H, W)`` or ``(B, 3, H, W)`` normalised images.
        mean: the per-channel mean used to normalise.
        std: the per-channel std used to normalise.
        clamp: clamp the result to [0, 1].

    Returns:
        Images in [0, 1] (when clamped), same shape, dtype and device as ``tensor``.
    """
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != len(mean):
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) with {len(mean)} channels, got {tuple(tensor.shape)}")
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    s = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    out = tensor * s + m
    return out.clamp(0.0, 1.0) if clamp else out
