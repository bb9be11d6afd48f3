"""Robust image loading and the errors the data layer raises.

Every image that enters the data pipeline goes through :func:`load_image`, which turns whatever PIL opens
(grayscale, palette, alpha, CMYK, 16-bit) into 8-bit RGB with correct values, and turns every failure into an
:class:`ImageLoadError` that names the file and the data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMG_EXTENSIONS",
    "DatasetError",
    "DatasetIntegrityError",
    "DatasetLayoutError",
    "ImageLoadError",
    "MissingExtraError",
    "check_image_file",
    "check_image_size",
    "image_size_problem",
    "load_image",
    "to_rgb",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# The longest side of an image racnn reads may be at most this many times its shortest. The preprocessing resizes
# the SHORTER side to about the input size, so a 1 x 100000 picture would become 512 x 51 million pixels.
MAX_ASPECT_RATIO = 50

# Modes that hold more than 8 bits per channel; PIL's own convert("L") clips them at 255 instead of scaling.
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DatasetError(Exception):
    """Base class of the data layer's errors."""


class ImageLoadError(DatasetError, ValueError):
    """An image file is missing, truncated or not an image.

    Attributes:
        path: the file.
        reason: what went wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str, dataset: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.dataset = dataset
        where = f" (data set '{dataset}')" if dataset else ""
        super().__init__(f"cannot load image {self.path}{where}: {reason}")


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """Files or folders that the on-disk layout requires are missing.

    Attributes:
        missing: the missing paths.
    """

    def __init__(self, dataset: str, root: str | os.PathLike, expected: list[str], missing: list[str]) -> None:
        self.dataset = dataset
        self.root = str(root)
        self.expected = list(expected)
        self.missing = list(missing)
        lines = [f"the {dataset} layout under {self.root} is incomplete.", "Expected:"]
        lines += [f"  {e}" for e in expected]
        lines.append("Missing:")
        lines += [f"  {m}" for m in missing]
        super().__init__("\n".join(lines))


class MissingExtraError(DatasetError, ImportError):
    """A layout needs a package of an optional extra that is not installed (scipy for the ``.mat`` files)."""


class DatasetIntegrityError(DatasetError, ValueError):
    """The annotation files are readable but inconsistent (labels out of range, duplicate ids, ...).

    Attributes:
        problems: one line per problem.
    """

    def __init__(self, dataset: str, root: str | os.PathLike, problems: list[str], max_listed: int = 20) -> None:
        self.dataset = dataset
        self.root = str(root)
        self.problems = list(problems)
        lines = [f"{len(problems)} problem(s) in the {dataset} annotations under {self.root}:"]
        lines += [f"  - {p}" for p in problems[:max_listed]]
        if len(problems) > max_listed:
            lines.append(f"  ... and {len(problems) - max_listed} more")
        lines.append(f"Run `racnn data verify --dataset {dataset} --root {self.root}` for a full report.")
        super().__init__("\n".join(lines))


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB; transparent pixels are composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_MODES:
        # 16-bit data (PNG/TIFF grayscale, or mode "I" as older Pillow reads them): scale 0..65535 -> 0..255.
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.round(values).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 255)
        return Image.fromarray(np.round(values).astype(np.uint8), mode="L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P without transparency, CMYK, YCbCr, LAB, HSV: PIL's conversion is exact (up to 8-bit rounding).
    return image.convert("RGB")


def image_size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` pixels is refused (no pixels, or sides more than
    :data:`MAX_ASPECT_RATIO` times apart), or None."""
    if width < 1 or height < 1:
        return f"it has no pixels ({width} x {height})"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (
            f"it is {width} x {height} pixels: sides more than {MAX_ASPECT_RATIO} times apart would be resized to a "
            "huge image (the shorter side goes to the input size)"
        )
    return None


def check_image_size(width: int, height: int, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when :func:`image_size_problem` finds one."""
    problem = image_size_problem(width, height)
    if problem:
        raise ValueError(f"{what}: {problem}")


def load_image(path: str | os.PathLike, dataset: str | None = None) -> Image.Image:
    """Loads an image file as an 8-bit RGB PIL image.

    Grayscale (``L``, ``1``), palette (``P``, with or without transparency), ``RGBA``/``LA`` (composited on
    white), ``CMYK`` and 16-bit (``I;16``, ``I``: scaled so that 65535 becomes 255) images are all converted.
    The file is fully decoded here, so a truncated file fails now rather than inside a transform.

    Args:
        path: the image file.
        dataset: name of the data set the file belongs to, used in the error message.

    Returns:
        The decoded image in mode ``RGB``.

    Raises:
        ImageLoadError: the file is missing, empty, truncated, or not an image PIL can read.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a FIFO or device that would block the read forever
        raise ImageLoadError(path, "not a regular file", dataset)
    try:
        with Image.open(path) as image:
            problem = image_size_problem(image.width, image.height)
            if problem:
                raise ImageLoadError(path, problem, dataset)
            image.load()
            return to_rgb(image)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found", dataset) from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file PIL can identify", dataset) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(path, f"{type(error).__name__}: {error}", dataset) from error


def _has_end_marker(path: Path, format: str | None) -> bool:
    """Whether a JPEG/PNG file ends with its end-of-image marker (other formats: True)."""
    tail_markers = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
    marker = tail_markers.get(format or "")
    if marker is None:
        return True
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 64))
        return marker in f.read()


def check_image_file(path: str | os.PathLike, full: bool = False) -> str | None:
    """Checks that a file is a readable image, cheaply by default.

    The cheap check opens the header (so missing, empty and non-image files are caught) and looks for the
    JPEG/PNG end marker in the last bytes; only a file without it is fully decoded, to tell a truncated file
    from one with trailing data. ``full=True`` runs ``PIL.Image.verify`` and a full decode on every file.

    Args:
        path: the image file.
        full: verify and decode every file instead of the cheap check.

    Returns:
        None when the file is good, else the reason it is not.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return "not a regular file" if path.exists() else "file not found"
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            format = image.format
            problem = image_size_problem(image.width, image.height)
            if problem:
                return problem
            if full:
                image.verify()
        if full or not _has_end_marker(path, format):
            load_image(path)
    except ImageLoadError as error:
        return error.reason
    except UnidentifiedImageError:
        return "not an image file PIL can identify"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None
