"""A built-in synthetic fine-grained data set: the class is a small detail on one object in a cluttered scene.

Each image is a smooth random background with pixel noise and several distractor blobs of random colours, plus
one object: an elliptical "body" of a class-independent random colour with a disc-shaped "head" at one end.
The class lives only in the head's pattern: stripes whose orientation (4 choices) and complementary colour pair
(red/cyan, green/magenta, blue/yellow) are class-specific. The stripes' period is about 4 px at 96 px and both
colours average to mid-grey, so the pattern washes out when the image is looked at coarsely (downsampled) and is
clear once the object is cropped and zoomed, which is what RA-CNN's attention has to find.

With ``detail_period`` (the "fine detail" mode) the head keeps coarse stripes, horizontal or vertical, in its
colour pair, and its middle holds fine grey stripes, diagonal one way or the other, ``detail_period`` pixels a
period in the rendered image: class = (colour pair, coarse orientation, fine orientation). Rendered at a source
resolution (``data.source_size``) with a fine period of at most 1 px of scale 1's input, scale 1 can read the
coarse stripes (a pair of classes, and a reason to find the head) but not the fine ones, which only zooms
sampled from the source can read: a one-network baseline at scale 1's size is right about half the time.

With ``two_details`` (the "two details" mode, issue #12) the body is longer and carries a second disc, a "tail", at
its other end: the class is (stripe orientation of the head) x (colour pair of the tail). The head's stripes are
black and white, the tail is concentric rings in its colour pair (no orientation), so each detail alone tells only
part of the class and the two cannot be mistaken for each other. The two discs'
centres lie about 0.4 of the image side apart, so a box that holds both at once zooms little; an attention
region of the usual side sees one of them.

Every sample is generated from ``(seed, split, index)`` alone, so sample ``i`` is the same tensor in any access
order, in any DataLoader worker, on any machine with the same numpy and torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticFineGrained", "SyntheticSample"]

_SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
_ORIENTATIONS = (("horizontal", 0.0), ("diagonal-down", 45.0), ("vertical", 90.0), ("diagonal-up", 135.0))
# Complementary pairs: each pair averages to mid-grey, so the colours carry no class signal once blurred.
_PAIRS = (("red-cyan", (1.0, 0.0, 0.0)), ("green-magenta", (0.0, 1.0, 0.0)), ("blue-yellow", (0.0, 0.0, 1.0)))
# The fine-detail mode: the head's coarse stripes (a colour pair, horizontal or vertical: 6 kinds) tell a pair of
# classes; fine grey stripes in its middle, diagonal one way or the other, tell the class within the pair.
_COARSE_ORIENTATIONS = (_ORIENTATIONS[0], _ORIENTATIONS[2])
_FINE_ORIENTATIONS = (_ORIENTATIONS[1], _ORIENTATIONS[3])
MAX_CLASSES = len(_ORIENTATIONS) * len(_PAIRS)


@dataclass(frozen=True)
class SyntheticSample:
    """Ground truth of one synthetic sample.

    Boxes are ``(x1, y1, x2, y2)`` in normalised image coordinates (x by width, y by height, origin top-left),
    the convention of ``racnn.modeling.crop.boxes_to_xyxy(..., image_size=None)``; multiply by ``image_size`` for
    pixels.

    Attributes:
        index: position in the data set.
        label: class index.
        object_box: tight box around the whole object (body and head).
        detail_box: tight box around the class-specific head.
        detail_area: area of the head disc as a fraction of the image area.
        tail_box: in the two-details mode, the tight box around the tail (the second detail); else None.
    """

    index: int
    label: int
    object_box: tuple[float, float, float, float]
    detail_box: tuple[float, float, float, float]
    detail_area: float
    tail_box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class _Geometry:
    label: int
    body_center: tuple[float, float]  # pixels
    body_axes: tuple[float, float]  # semi-axes (a, b), pixels
    body_angle: float  # radians
    head_center: tuple[float, float]
    head_radius: float
    object_box: tuple[float, float, float, float]  # pixels
    tail_center: tuple[float, float] | None = None  # the two-details mode's second disc (same radius)


def _paint_ellipse(
    image: np.ndarray,
    colour: np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray],
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float,
) -> None:
    """Paints a rotated ellipse into ``image`` ``(3, S, S)`` in place, anti-aliased to about 1 px.

    Only the ellipse's bounding window is touched. ``colour`` is ``(3, 1, 1)`` or a function of the window's
    pixel-centre coordinates ``(xs (1, 1, w), ys (1, h, 1))`` returning ``(3, h, w)``.
    """
    size = image.shape[-1]
    cos, sin = math.cos(angle), math.sin(angle)
    ex, ey = math.hypot(a * cos, b * sin) + 1.0, math.hypot(a * sin, b * cos) + 1.0
    x0, x1 = max(0, int(cx - ex)), min(size, int(math.ceil(cx + ex)))
    y0, y1 = max(0, int(cy - ey)), min(size, int(math.ceil(cy + ey)))
    if x0 >= x1 or y0 >= y1:
        return
    xs = np.arange(x0, x1, dtype=np.float32).reshape(1, 1, -1) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32).reshape(1, -1, 1) + 0.5
    u = (xs - cx) * cos + (ys - cy) * sin
    v = (ys - cy) * cos - (xs - cx) * sin
    alpha = np.clip((1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * min(a, b) + 0.5, 0.0, 1.0)
    window = image[:, y0:y1, x0:x1]
    paint = colour(xs, ys) if callable(colour) else colour
    window += alpha * (paint - window)


def _stripes(
    cx: float, cy: float, degrees: float, period: float, phase: float, colour_a: np.ndarray, colour_b: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A colour function for :func:`_paint_ellipse`: stripes through ``(cx, cy)`` at ``degrees``, ``period`` px,
    from ``colour_b`` to ``colour_a`` (``(3, 1, 1)``), anti-aliased to about 1 px."""
    angle = math.radians(degrees)

    def colour(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        across = (ys - cy) * math.cos(angle) - (xs - cx) * math.sin(angle)  # distance across the stripes
        wave = np.clip(np.sin(2 * math.pi * across / period + phase) * period / math.pi, -1.0, 1.0)
        return colour_b + (wave * 0.5 + 0.5) * (colour_a - colour_b)

    return colour


def _disc_box(centre: tuple[float, float], radius: float, size: float) -> tuple[float, float, float, float]:
    """The normalised ``(x1, y1, x2, y2)`` box around a disc given in pixels."""
    x, y = centre
    return ((x - radius) / size, (y - radius) / size, (x + radius) / size, (y + radius) / size)


def _smooth_interpolation(size: int, knots: int) -> np.ndarray:
    """``(size, knots)`` row-normalised Gaussian weights that spread ``knots`` control values smoothly."""
    u = (np.arange(size) + 0.5) / size
    centres = (np.arange(knots) + 0.5) / knots
    weights = np.exp(-(((u[:, None] - centres[None, :]) * knots) ** 2))
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


class SyntheticFineGrained(Dataset):
    """Deterministic, in-memory synthetic fine-grained data set (see the module docstring for the design).

    Without a transform a sample is ``(image, label)`` with ``image`` a float32 tensor ``(3, S, S)`` in
    [-1, 1], i.e. the [0, 1] image normalised with mean = std = 0.5. With a transform, the transform receives
    the float32 [0, 1] image (8-bit quantised, like a decoded photo) and its output is returned.

    Args:
        num_samples: number of samples in this split.
        num_classes: number of classes, 2 to 12 (4 stripe orientations x 3 colour pairs; class ``c`` has
            orientation ``c % 4`` and colour pair ``c // 4``; with ``detail_period``, colour pair ``c // 4``,
            coarse orientation ``c // 2 % 2`` (horizontal, vertical), fine orientation ``c % 2`` (diagonal-down,
            diagonal-up)).
        image_size: side ``S`` of the square images in pixels (at least 32).
        seed: base seed; ``(seed, split, index)`` determines each sample.
        split: ``"train"``, ``"test"`` or ``"val"``; splits with the same seed are independent samples.
        transform: optional callable applied to the [0, 1] float image.
        cache: keep generated images in memory (uint8, ``3 * S * S`` bytes each).
        root: ignored; accepted so :func:`racnn.data.build_dataset` can pass it.
        detail_period: 0 (the default): the stripe period is half the head radius, so it scales with ``S``;
            otherwise the fine-detail mode (module docstring): the fine stripes' period in pixels of the rendered
            image, at least 2 (the finest the image can hold).
        two_details: the two-details mode (module docstring): class ``c`` has head orientation ``c % 4`` and
            tail colour pair ``c // 4``. Not with ``detail_period``.

    Attributes:
        classes: class names such as ``"red-cyan vertical"``.
        targets: the label of every sample (``index % num_classes``, so classes are balanced).
    """

    name = "synthetic"

    def __init__(
        self,
        num_samples: int = 1000,
        num_classes: int = 8,
        image_size: int = 96,
        seed: int = 0,
        split: str = "train",
        transform: Callable[[Tensor], Any] | None = None,
        cache: bool = False,
        root: str | None = None,
        detail_period: float = 0.0,
        two_details: bool = False,
    ) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
        if not 32 <= image_size <= 4096:
            raise ValueError(f"image_size must be between 32 and 4096 pixels, got {image_size}")
        if detail_period != 0 and not 2 <= detail_period <= image_size:
            raise ValueError(f"detail_period must be 0 or 2 to image_size ({image_size}) pixels, got {detail_period}")
        if two_details and detail_period:
            raise ValueError("two_details and detail_period are separate modes; set one of them")
        if not 1 <= num_samples <= 10_000_000:  # its targets list is made up front; an empty split evaluates nothing
            raise ValueError(f"num_samples must be between 1 and 10,000,000, got {num_samples}")
        if not 0 <= seed < 2**32:  # numpy's seeds; a negative one failed deep inside as "expected non-negative integer"
            raise ValueError(f"seed must be between 0 and 2**32 - 1, got {seed}")
        self.root = root
        self.split = split
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.detail_period = float(detail_period)
        self.two_details = bool(two_details)
        self.seed = int(seed)
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        if two_details:
            self.classes = [f"{_PAIRS[c // 4][0]} tail, {_ORIENTATIONS[c % 4][0]} head" for c in range(num_classes)]
        elif detail_period:
            self.classes = [
                f"{_PAIRS[c // 4][0]} {_COARSE_ORIENTATIONS[c // 2 % 2][0]}, {_FINE_ORIENTATIONS[c % 2][0]} fine"
                for c in range(num_classes)
            ]
        else:
            self.classes = [f"{_PAIRS[c // 4][0]} {_ORIENTATIONS[c % 4][0]}" for c in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_samples)]
        self._spread = _smooth_interpolation(image_size, 4)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, num_classes={self.num_classes}, "
            f"image_size={self.image_size}, seed={self.seed}, split={self.split!r})"
        )

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])

    def _geometry(self, index: int, rng: np.random.Generator) -> _Geometry:
        s = self.image_size
        radius = rng.uniform(0.07, 0.09) * s  # head: 1.5 % to 2.5 % of the image area
        a = radius * rng.uniform(1.9, 2.3)
        b = a * rng.uniform(0.55, 0.7)
        if self.two_details:  # a longer, slimmer body: its two ends about 0.4 S apart
            a, b = a * 1.4, b * 0.8
        angle = rng.uniform(0.0, 2.0 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        head = (0.85 * a * cos, 0.85 * a * sin)  # head centre relative to the body centre
        # Extents of the rotated ellipse (with its 1 px rim) and of the head disc, relative to the body centre.
        ex, ey = math.hypot((a + 1) * cos, (b + 1) * sin), math.hypot((a + 1) * sin, (b + 1) * cos)
        x1, x2 = min(-ex, head[0] - radius), max(ex, head[0] + radius)
        y1, y2 = min(-ey, head[1] - radius), max(ey, head[1] + radius)
        if self.two_details:  # the tail mirrors the head through the body centre
            x1, x2 = min(x1, -head[0] - radius), max(x2, -head[0] + radius)
            y1, y2 = min(y1, -head[1] - radius), max(y2, -head[1] + radius)
        cx = rng.uniform(1.0 - x1, s - 1.0 - x2)
        cy = rng.uniform(1.0 - y1, s - 1.0 - y2)
        return _Geometry(
            label=index % self.num_classes,
            body_center=(cx, cy),
            body_axes=(a, b),
            body_angle=angle,
            head_center=(cx + head[0], cy + head[1]),
            head_radius=radius,
            object_box=(cx + x1, cy + y1, cx + x2, cy + y2),
            tail_center=(cx - head[0], cy - head[1]) if self.two_details else None,
        )

    def sample_info(self, index: int) -> SyntheticSample:
        """Label, object box and detail box of sample ``index`` (cheap: no image is rendered)."""
        g = self._geometry(index, self._rng(index))
        s = float(self.image_size)
        hx, hy, r = g.head_center[0], g.head_center[1], g.head_radius
        return SyntheticSample(
            index=index,
            label=g.label,
            object_box=tuple(v / s for v in g.object_box),
            detail_box=((hx - r) / s, (hy - r) / s, (hx + r) / s, (hy + r) / s),
            detail_area=math.pi * r * r / (s * s),
            tail_box=None if g.tail_center is None else _disc_box(g.tail_center, r, s),
        )

    def object_boxes(self) -> Tensor:
        """Object boxes of all samples, ``(N, 4)`` normalised ``(x1, y1, x2, y2)``."""
        return torch.tensor([self.sample_info(i).object_box for i in range(len(self))]).view(-1, 4)

    def detail_boxes(self) -> Tensor:
        """Detail boxes of all samples, normalised ``(x1, y1, x2, y2)``: ``(N, 4)`` (the head), or in the
        two-details mode ``(N, 2, 4)`` (the head, then the tail)."""
        if self.two_details:
            infos = [self.sample_info(i) for i in range(len(self))]
            return torch.tensor([[info.detail_box, info.tail_box] for info in infos]).view(-1, 2, 4)
        return torch.tensor([self.sample_info(i).detail_box for i in range(len(self))]).view(-1, 4)

    def render(self, index: int) -> Tensor:
        """The image of sample ``index`` as float32 ``(3, S, S)`` in [0, 1], before any transform."""
        # numpy, not torch: single-threaded elementwise work on small arrays is faster and never contends
        # with the training process's intra-op threads.
        f32 = np.float32
        if index in self._cache:
            return torch.from_numpy(self._cache[index].astype(f32) / f32(255))
        rng = self._rng(index)
        g = self._geometry(index, rng)
        s = self.image_size

        # Background: smooth random colour field plus pixel noise.
        grid = rng.uniform(0.1, 0.9, size=(3, 4, 4)).astype(f32)
        image = self._spread @ grid @ self._spread.T  # (3, S, S)
        image += (rng.random((3, s, s), dtype=f32) - 0.5) * 0.14

        # Distractor blobs, drawn under the object.
        n = int(rng.integers(4, 9))
        blobs = rng.uniform(size=(n, 5))
        colours = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(f32)
        for (x, y, a, b, angle), colour in zip(blobs, colours, strict=True):
            _paint_ellipse(image, colour, x * s, y * s, (0.04 + 0.08 * a) * s, (0.03 + 0.06 * b) * s, angle * math.pi)

        # Body: ellipse of a random colour with a darker rim.
        (cx, cy), (a, b), angle = g.body_center, g.body_axes, g.body_angle
        body_colour = rng.uniform(0.1, 0.9, size=(3, 1, 1)).astype(f32)
        _paint_ellipse(image, 0.5 * body_colour, cx, cy, a + 1.0, b + 1.0, angle)
        _paint_ellipse(image, body_colour, cx, cy, a, b, angle)

        # Head: a disc of class-specific stripes (orientation and complementary colour pair).
        hx, hy, r = g.head_center[0], g.head_center[1], g.head_radius
        fine = bool(self.detail_period)
        degrees = (_COARSE_ORIENTATIONS[g.label // 2 % 2] if fine else _ORIENTATIONS[g.label % 4])[1]
        primary = np.array(_PAIRS[g.label // 4][1], dtype=f32).reshape(3, 1, 1)
        saturation = rng.uniform(0.7, 1.0)
        colour_a = 0.5 + saturation * (primary - 0.5)  # a complementary pair: mid-grey on average
        colour_b = 0.5 - saturation * (primary - 0.5)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        if g.tail_center is not None:  # the head in a random pair and the tail, from draws after the default's
            self._paint_two_details(image, g, rng)
        else:
            _paint_ellipse(image, _stripes(hx, hy, degrees, 0.5 * r, phase, colour_a, colour_b), hx, hy, r, r, 0.0)
        if fine:  # in its middle, fine grey stripes: the rest of the class, mid-grey once blurred
            degrees = _FINE_ORIENTATIONS[g.label % 2][1]
            grey = np.full((3, 1, 1), 0.5, dtype=f32)
            light, dark = grey + 0.4 * saturation, grey - 0.4 * saturation
            details = _stripes(hx, hy, degrees, self.detail_period, rng.uniform(0.0, 2.0 * math.pi), light, dark)
            _paint_ellipse(image, details, hx, hy, 0.6 * r, 0.6 * r, 0.0)

        quantised = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)  # 8-bit, like a decoded photo
        if self.cache:
            self._cache[index] = quantised
        return torch.from_numpy(quantised.astype(f32) / f32(255))

    def _paint_two_details(self, image: np.ndarray, g: _Geometry, rng: np.random.Generator) -> None:
        """The two-details mode's discs: the head's stripes in the class's orientation, in black and white (no
        colour); the tail's concentric rings in the class's colour pair (no orientation). Both average to grey."""
        f32 = np.float32
        saturations, phases = rng.uniform(0.7, 1.0, size=2), rng.uniform(0.0, 2.0 * math.pi, size=2)
        r, period = g.head_radius, 0.5 * g.head_radius
        grey = np.ones((3, 1, 1), dtype=f32)
        primary = np.array(_PAIRS[g.label // 4][1], dtype=f32).reshape(3, 1, 1)
        orientation = math.radians(_ORIENTATIONS[g.label % 4][1])
        discs = ((g.head_center, grey, True), (g.tail_center, primary, False))
        for ((x, y), colour, striped), saturation, phase in zip(discs, saturations, phases, strict=True):
            colour_a, colour_b = 0.5 + saturation * (colour - 0.5), 0.5 - saturation * (colour - 0.5)

            def pattern(xs, ys, x=x, y=y, striped=striped, phase=phase, colour_a=colour_a, colour_b=colour_b):
                if striped:  # distance across the stripes
                    across = (ys - y) * math.cos(orientation) - (xs - x) * math.sin(orientation)
                else:  # distance from the centre: rings
                    across = np.sqrt((xs - x) ** 2 + (ys - y) ** 2)
                wave = np.clip(np.sin(2 * math.pi * across / period + phase) * period / math.pi, -1.0, 1.0)
                return colour_b + (wave * 0.5 + 0.5) * (colour_a - colour_b)

            _paint_ellipse(image, pattern, x, y, r, r, 0.0)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.render(index)
        label = index % self.num_classes
        if self.transform is not None:
            return self.transform(image), label
        return (image - 0.5) / 0.5, label
