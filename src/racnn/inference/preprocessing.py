"""What racnn does to an image before the model sees it, stated exactly: for export sidecars, ``racnn eval`` and
anyone feeding an export from another language.

The steps are those of :func:`racnn.data.transforms.build_transforms` for the test split (torchvision
``transforms.v2`` on a ``uint8`` RGB tensor); :func:`preprocessing_spec` writes them out with every choice that
changes the numbers (the resize's filter and antialiasing, the rounding of sizes and of the crop's corner, the
channel order, the layout). docs/INFERENCE.md holds a plain PIL + numpy reference of the same steps, and
tests/test_preprocessing.py runs that very code against racnn's input.

May import: the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["REFERENCE_TOLERANCE", "describe_preprocessing", "preprocessing_spec"]

# How close the PIL reference of docs/INFERENCE.md comes to racnn's input, before normalisation: one grey level.
# PIL's Image.resize(BILINEAR) and torchvision's antialiased bilinear resize of uint8 images apply the same filter
# (a triangle widened by the reduction factor) in fixed point, and round some sums the other way.
REFERENCE_TOLERANCE = 1 / 255


def preprocessing_spec(
    input_size: int, resize_ratio: float, mean: Sequence[float], std: Sequence[float], source_size: int = 0
) -> dict[str, Any]:
    """The test-time preprocessing of a model, as a JSON-ready dict (the sidecar's ``"preprocessing"``).

    Args:
        input_size: ``model.input_size``, the side of the ``images`` input.
        resize_ratio: ``data.resize_ratio``.
        mean, std: the backbone's normalisation.
        source_size: ``data.source_size`` (0: none): the geometry then runs at this side and gives the ``source``
            input, and ``images`` is that crop resized down.
    """
    side = source_size or input_size
    shorter = round(side * resize_ratio)
    spec: dict[str, Any] = {
        "decode": "RGB, 8 bits per channel (PIL Image.convert('RGB'); EXIF orientation not applied)",
        "channel_order": "RGB",
        "resize": {
            "shorter_side": shorter,
            "longer_side": f"int(longer * {shorter} / shorter), truncated",
            "interpolation": "bilinear",
            "antialias": True,
            "on": "the uint8 image (torchvision.transforms.v2.Resize; PIL Image.resize(size, Image.BILINEAR) "
            "gives the same within one grey level; not bicubic, PIL's default)",
        },
        "crop": {
            "size": side,
            "position": "centre: top = int(round((height - size) / 2)), left = int(round((width - size) / 2)) "
            "with Python's round (halves to even)",
        },
        "scale": "float32 x / 255, in [0, 1]",
        "normalize": {"mean": list(mean), "std": list(std), "formula": "(x - mean) / std per channel"},
        "layout": "NCHW float32",
        "resize_ratio": resize_ratio,
    }
    if source_size:
        spec["inputs"] = {
            "source": f"the {side} px crop, normalised",
            "images": f"the {side} px crop (float, before normalisation) resized to {input_size} x {input_size}, "
            "bilinear, antialiased (torch's float resize), then normalised",
        }
    else:
        spec["inputs"] = {"images": f"the {side} px crop, normalised"}
    return spec


def describe_preprocessing(spec: dict[str, Any]) -> str:
    """One line for a log: e.g. ``shorter side to 256 (bilinear, antialiased), centre crop 224, RGB, (x/255 - mean)
    / std with mean [0.485, ...]``."""
    resize, crop, norm = spec["resize"], spec["crop"], spec["normalize"]
    mean = ", ".join(f"{v:g}" for v in norm["mean"])
    std = ", ".join(f"{v:g}" for v in norm["std"])
    line = (
        f"shorter side to {resize['shorter_side']} ({resize['interpolation']}, "
        f"{'antialiased' if resize['antialias'] else 'aliased'}), centre crop {crop['size']}, "
        f"{spec['channel_order']}, (x/255 - mean) / std with mean [{mean}], std [{std}]"
    )
    if "source" in spec["inputs"]:
        line += "; the crop is the source, and resized down (antialiased) it is the images"
    return line
