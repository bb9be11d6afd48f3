"""Pixel helpers shared by the picture tests (test_visualize, test_model_pictures)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def colours(image: Image.Image) -> set[tuple[int, int, int]]:
    """Every RGB colour in ``image``."""
    return {tuple(int(v) for v in c) for c in np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)}


def edge_pixels(box, image_size, inset: int = 3):
    """Pixels on the four outline centre lines of a drawn box, corners (where boxes may cross) left out."""
    width, height = image_size
    x1, y1, x2, y2 = (round(v) for v in box)
    clamp_x = lambda x: min(max(x, 0), width - 1)  # noqa: E731  (a line at the border is drawn half inside)
    clamp_y = lambda y: min(max(y, 0), height - 1)  # noqa: E731
    points = []
    for y in range(y1 + inset, y2 - inset + 1):
        points += [(clamp_x(x1), y), (clamp_x(x2), y)]
    for x in range(x1 + inset, x2 - inset + 1):
        points += [(x, clamp_y(y1)), (x, clamp_y(y2))]
    return points
