"""Differentiable attention crop-and-zoom (METHOD §2) and box helpers.

A box is ``(tx, ty, tl)`` in normalised coordinates of the image it refers to: ``tx`` in units of the width,
``ty`` in units of the height (origin top-left, x right, y down) and the half side ``tl`` in units of the
shorter side, so every box is square in pixels. Pixel corners are ``x1 = tx * W - tl * min(H, W)``,
``x2 = tx * W + tl * min(H, W)``, likewise for y with ``H``. Pixel ``p`` covers ``[p, p + 1)``; its centre is
``p + 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionCrop",
    "adaptive_avg_pool_matmul",
    "antialiased_crop",
    "attention_crop",
    "boxes_to_xyxy",
    "compose_boxes",
    "image_pyramid",
    "xyxy_to_boxes",
]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"out_size must be a positive int or a pair (h, w) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_boxes(boxes: Tensor, width: int = 3, name: str = "boxes") -> None:
    if boxes.dim() != 2 or boxes.shape[1] != width:
        raise ValueError(f"{name} must have shape (B, {width}), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")


def _scales(image_size: tuple[int, int] | None) -> tuple[float, float, float]:
    """Multipliers (x, y, side) from normalised units to output units (pixels, or normalised if None)."""
    if image_size is None:
        return 1.0, 1.0, 1.0
    height, width = image_size
    return float(width), float(height), float(min(height, width))


def boxes_to_xyxy(boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Convert ``(tx, ty, tl)`` boxes to corners ``(x1, y1, x2, y2)``.

    Args:
        boxes: ``(B, 3)`` boxes ``(tx, ty, tl)``, normalised.
        image_size: ``(H, W)`` to get pixel corners; ``None`` for normalised corners (x by W, y by H), which
            assumes a square image for the half side.

    Returns:
        ``(B, 4)`` corners ``(x1, y1, x2, y2)``.
    """
    _check_boxes(boxes)
    sx, sy, side = _scales(image_size)
    tx, ty, tl = boxes.unbind(-1)
    half_x = tl * (side / sx)  # half side in units of W
    half_y = tl * (side / sy)  # half side in units of H
    xyxy = torch.stack([tx - half_x, ty - half_y, tx + half_x, ty + half_y], dim=-1)  # (B, 4) normalised
    return xyxy * xyxy.new_tensor([sx, sy, sx, sy])


def xyxy_to_boxes(xyxy: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Convert square corners ``(x1, y1, x2, y2)`` to ``(tx, ty, tl)`` boxes (inverse of :func:`boxes_to_xyxy`).

    The half side is taken from the x extent; for a box that is not square in pixels the y extent is ignored.

    Args:
        xyxy: ``(B, 4)`` corners, in pixels when ``image_size`` is given, else normalised (x by W, y by H).
        image_size: ``(H, W)`` or ``None``.

    Returns:
        ``(B, 3)`` normalised boxes ``(tx, ty, tl)``.
    """
    _check_boxes(xyxy, width=4, name="xyxy")
    sx, sy, side = _scales(image_size)
    x1, y1, x2, y2 = xyxy.unbind(-1)
    tx = (x1 + x2) / (2 * sx)
    ty = (y1 + y2) / (2 * sy)
    tl = (x2 - x1) / (2 * side)
    return torch.stack([tx, ty, tl], dim=-1)


def compose_boxes(boxes: Sequence[Tensor], image_size: tuple[int, int] | None = None) -> list[Tensor]:
    """Express a chain of nested boxes in the coordinates of the first image.

    Box ``s`` is given in the normalised coordinates of the (square) crop taken with box ``s - 1``; box 0 is in
    the coordinates of the image. The result ``out[s]`` is box ``s`` in the image's coordinates, so cropping the
    image with ``out[s]`` gives the same region as cropping recursively.

    Args:
        boxes: ``S`` tensors of shape ``(B, 3)``.
        image_size: ``(H, W)`` of the first image; ``None`` means square. Crops are always square.

    Returns:
        ``S`` tensors of shape ``(B, 3)``; ``out[0]`` is ``boxes[0]``.
    """
    for box in boxes:
        _check_boxes(box)
    sx, sy, side = _scales(image_size)
    out: list[Tensor] = []
    for box in boxes:
        if not out:
            out.append(box)
            continue
        tx0, ty0, tl0 = out[-1].unbind(-1)  # outer box, image coordinates
        tx, ty, tl = box.unbind(-1)  # inner box, outer crop's coordinates
        crop_side = 2 * tl0 * side  # side of the outer crop in image units (pixels if image_size is given)
        x = tx0 * sx - tl0 * side + tx * crop_side  # inner centre, image units
        y = ty0 * sy - tl0 * side + ty * crop_side
        out.append(torch.stack([x / sx, y / sy, tl * crop_side / side], dim=-1))
    return out


def attention_crop(images: Tensor, boxes: Tensor, out_size: int | Sequence[int], *, k: float = 10.0) -> Tensor:
    """Crop square boxes out of a batch of images and zoom them, differentiably (METHOD §2).

    Output pixel ``(i, j)`` samples the image at the pixel coordinates
    ``x = x1 + (j + 0.5) * (x2 - x1) / out_w``, ``y = y1 + (i + 0.5) * (y2 - y1) / out_h`` with bilinear
    interpolation (zeros outside the image), and is multiplied by the boxcar mask
    ``M(x, y) = [h(x - x1) - h(x - x2)] * [h(y - y1) - h(y - y2)]``, ``h(t) = 1 / (1 + exp(-k t))``, evaluated at
    the same points. Gradients reach ``images`` and ``boxes`` by autograd, through the sample positions and the
    mask. The grid and mask are computed in at least float32 (a bfloat16 grid would be off by pixels); the
    result has the dtype of ``images``.

    Args:
        images: ``(B, C, H, W)`` floating-point images.
        boxes: ``(B, 3)`` boxes ``(tx, ty, tl)``, normalised (see the module docstring).
        out_size: output size, ``int`` or ``(h, w)``.
        k: steepness of the logistic per input pixel.

    Returns:
        ``(B, C, h, w)`` crops.
    """
    out_h, out_w = _pair(out_size)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got {images.dtype}")
    _check_boxes(boxes)
    if boxes.shape[0] != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {boxes.shape[0]} boxes")
    height, width = images.shape[-2:]

    dtype = torch.promote_types(torch.promote_types(images.dtype, boxes.dtype), torch.float32)
    boxes = boxes.to(device=images.device, dtype=dtype)
    x1, y1, x2, y2 = boxes_to_xyxy(boxes, (height, width)).unbind(-1)  # each (B,), pixels

    # Sample points in pixel coordinates, separable in x and y.
    steps_x = (torch.arange(out_w, device=images.device, dtype=dtype) + 0.5) / out_w  # (w,)
    steps_y = (torch.arange(out_h, device=images.device, dtype=dtype) + 0.5) / out_h  # (h,)
    xs = x1[:, None] + steps_x * (x2 - x1)[:, None]  # (B, w)
    ys = y1[:, None] + steps_y * (y2 - y1)[:, None]  # (B, h)

    # Boxcar mask at the sample points; its outer product is only (B, h, w). There xs - x1 = (j + 0.5) * side / w,
    # so the mask depends on the side alone (it dims the border samples of small boxes); the gradient w.r.t. the
    # box position comes from the bilinear sampling.
    mask_x = torch.sigmoid(k * (xs - x1[:, None])) - torch.sigmoid(k * (xs - x2[:, None]))  # (B, w)
    mask_y = torch.sigmoid(k * (ys - y1[:, None])) - torch.sigmoid(k * (ys - y2[:, None]))  # (B, h)
    mask = mask_y[:, None, :, None] * mask_x[:, None, None, :]  # (B, 1, h, w)

    # grid_sample with align_corners=False maps -1 and 1 to the outer edges of the border pixels: x -> 2x/W - 1.
    grid_x = (2.0 / width) * xs - 1.0  # (B, w)
    grid_y = (2.0 / height) * ys - 1.0  # (B, h)
    grid = torch.stack(
        [grid_x[:, None, :].expand(-1, out_h, -1), grid_y[:, :, None].expand(-1, -1, out_w)], dim=-1
    )  # (B, h, w, 2)
    sampled = F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (sampled * mask).to(images.dtype)  # (B, C, h, w)


def _pool_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """``(n_out, n_in)``: row ``i`` averages PyTorch's adaptive bin ``[floor(i n / m), ceil((i + 1) n / m))``."""
    matrix = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool_matmul(x: Tensor, size: tuple[int | None, int | None]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two matrix products ``P_h @ x @ P_w^T`` (``None``: that side kept).

    The same numbers, but exportable to ONNX for any sizes: the ONNX exporter handles adaptive pooling only where
    the output size divides the input size. The matrices are constants of the input's (traced) shape.
    """
    height, width = int(x.shape[-2]), int(x.shape[-1])
    rows = _pool_matrix(height, size[0] or height, x)  # (out_h, H)
    cols = _pool_matrix(width, size[1] or width, x)  # (out_w, W)
    return torch.matmul(torch.matmul(rows, x), cols.t())  # (B, C, out_h, out_w)


def image_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """``images`` and ``levels`` successive 2x reductions of it (2 x 2 average pooling), coarsest last.

    An odd side rounds up (``(n + 1) // 2``, adaptive pooling with overlapping bins), so every level spans the
    whole image: a normalised position means the same place at every level.
    Under an ONNX export the pooling is :func:`adaptive_avg_pool_matmul` (the same numbers, exportable).

    Args:
        images: ``(B, C, H, W)`` images.
        levels: number of reductions, at least 0.

    Returns:
        ``levels + 1`` tensors; level ``l`` is ``(B, C, ~H / 2^l, ~W / 2^l)``.
    """
    pool = adaptive_avg_pool_matmul if torch.onnx.is_in_onnx_export() else F.adaptive_avg_pool2d  # odd sides too
    pyramid = [images]
    for _ in range(levels):
        height, width = pyramid[-1].shape[-2:]
        pyramid.append(pool(pyramid[-1], ((height + 1) // 2, (width + 1) // 2)))
    return pyramid


def antialiased_crop(
    images: Tensor, boxes: Tensor, out_size: int | Sequence[int], *, k: float = 10.0, k_side: float | None = None
) -> Tensor:
    """:func:`attention_crop` that does not alias where a box covers more image pixels than the output has.

    A box whose side covers ``r = side / min(h, w)`` image pixels per output pixel with ``r > 1`` skips pixels
    under plain bilinear sampling, and fine texture turns into false coarse patterns (moire). Here every box
    is sampled from :func:`image_pyramid` at the fractional level ``t = clamp(log2 r, 0, L)``: bilinearly in
    levels ``floor(t)`` and ``floor(t) + 1``, blended linearly in ``t`` (trilinear "mipmap" filtering), so
    each output pixel averages about the image pixels it covers. ``L`` is the number of levels it takes to
    bring the image's shorter side down to the output size. The blend keeps the result continuous and
    differentiable in the box's side as well as its position; per sample, all batched (one crop per level).
    Where ``r <= 1`` (the box magnifies) the result is :func:`attention_crop`'s exactly.

    Args:
        images: ``(B, C, H, W)`` floating-point images.
        boxes: ``(B, 3)`` boxes ``(tx, ty, tl)``, normalised (see the module docstring).
        out_size: output size, ``int`` or ``(h, w)``.
        k: steepness of the boxcar mask's logistic, per pixel of an image whose shorter side is ``k_side``.
        k_side: ``None`` for ``images``' own shorter side. A crop from a high-resolution copy of an image passes
            the image's side, so its mask is the one :func:`attention_crop` gives on the image itself.

    Returns:
        ``(B, C, h, w)`` crops, in the dtype of ``images``.
    """
    out_h, out_w = _pair(out_size)
    _check_boxes(boxes)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point (B, C, H, W) tensor, got {images.dtype} {images.shape}")
    short = min(images.shape[-2:])
    k_side = float(short if k_side is None else k_side)
    out_short = min(out_h, out_w)
    levels = max(0, math.ceil(math.log2(short / out_short))) if short > out_short else 0
    if levels == 0:  # no box inside the image covers more pixels than the output has
        return attention_crop(images, boxes, (out_h, out_w), k=k * (k_side / short))
    dtype = torch.promote_types(torch.promote_types(images.dtype, boxes.dtype), torch.float32)
    side = 2 * boxes[:, 2].to(device=images.device, dtype=dtype) * short  # (B,), image pixels
    t = torch.log2(side.clamp(min=1e-6) / out_short).clamp(0, levels)  # (B,), the fractional level
    out = None
    for level, image in enumerate(image_pyramid(images, levels)):
        weight = (1 - (t - level).abs()).clamp(min=0)  # (B,), a hat in t: the weights sum to 1 over the levels
        crop = attention_crop(image, boxes, (out_h, out_w), k=k * (k_side / min(image.shape[-2:])))  # (B, C, h, w)
        term = crop.to(dtype) * weight[:, None, None, None]
        out = term if out is None else out + term
    return out.to(images.dtype)  # (B, C, h, w)


class AttentionCrop(nn.Module):
    """See :func:`attention_crop`."""

    def __init__(self, out_size: int | Sequence[int], k: float = 10.0) -> None:
        super().__init__()
        self.out_size = _pair(out_size)
        self.k = float(k)

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        return attention_crop(images, boxes, self.out_size, k=self.k)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, k={self.k}"
