"""The PIL + numpy preprocessing reference of docs/INFERENCE.md, run as written, against racnn's own input; the
sidecar's statement of the preprocessing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from racnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from racnn.inference.preprocessing import REFERENCE_TOLERANCE, describe_preprocessing, preprocessing_spec

REPO = Path(__file__).resolve().parents[1]
CUB = Path("/work/shared/data/cub25_whole/images")  # whole CUB photographs, where this machine has them
BOUND = REFERENCE_TOLERANCE / min(IMAGENET_STD) + 1e-6  # one grey level, after normalisation


def _reference():
    """The code block under ``<!-- reference: preprocessing -->`` in docs/INFERENCE.md, executed."""
    text = (REPO / "docs" / "INFERENCE.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- reference: preprocessing -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/INFERENCE.md lost its preprocessing reference"
    namespace: dict = {}
    exec(compile(block.group(1), "INFERENCE.md", "exec"), namespace)  # the documented code, as a reader copies it
    return namespace["preprocess"]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus fine noise: the resize's filter matters for both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    smooth = np.stack([np.sin(7 * x + c) * np.cos(5 * y - c) for c in range(3)], -1)
    pixels = 127.5 + 90 * smooth + rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "size,input_size,ratio",
    [((300, 200), 224, 1.142857), ((200, 333), 224, 512 / 448), ((97, 131), 32, 1.15), ((64, 64), 32, 1.0)],
)
def test_reference_gives_racnns_input_within_one_grey_level(size, input_size, ratio):
    preprocess = _reference()
    image = _photo(*size, seed=size[0])
    racnn_input = build_transforms("test", input_size, IMAGENET_MEAN, IMAGENET_STD, ratio)(image).numpy()
    reference = preprocess(image, input_size, ratio, IMAGENET_MEAN, IMAGENET_STD)
    assert set(reference) == {"images"} and reference["images"].shape == (1, 3, input_size, input_size)
    assert reference["images"].dtype == np.float32
    assert np.abs(reference["images"][0] - racnn_input).max() <= BOUND


def test_reference_gives_both_views_of_a_source_model():
    preprocess = _reference()
    image = _photo(260, 180, seed=3)
    views = build_transforms("test", 32, IMAGENET_MEAN, IMAGENET_STD, 1.14, source_size=96)(image)
    reference = preprocess(image, 32, 1.14, IMAGENET_MEAN, IMAGENET_STD, source_size=96)
    assert reference["source"].shape == (1, 3, 96, 96) and reference["images"].shape == (1, 3, 32, 32)
    assert np.abs(reference["source"][0] - views[1].numpy()).max() <= BOUND
    assert np.abs(reference["images"][0] - views[0].numpy()).max() <= BOUND


@pytest.mark.skipif(not CUB.is_dir(), reason="no CUB photographs on this machine")
def test_reference_on_whole_bird_photographs():
    preprocess = _reference()
    transform = build_transforms("test", 224, IMAGENET_MEAN, IMAGENET_STD, 1.142857)
    for path in sorted(CUB.rglob("*.jpg"))[:6]:
        with Image.open(path) as image:
            image = image.convert("RGB")
            racnn_input = transform(image).numpy()
            reference = preprocess(image, 224, 1.142857, IMAGENET_MEAN, IMAGENET_STD)["images"][0]
        assert np.abs(reference - racnn_input).max() <= BOUND, path


def test_spec_names_every_choice_that_changes_the_numbers():
    spec = preprocessing_spec(224, 1.142857, IMAGENET_MEAN, IMAGENET_STD)
    assert spec["resize"]["shorter_side"] == 256 and spec["resize"]["interpolation"] == "bilinear"
    assert spec["resize"]["antialias"] is True and spec["channel_order"] == "RGB" and spec["crop"]["size"] == 224
    assert spec["normalize"]["mean"] == list(IMAGENET_MEAN) and "truncated" in spec["resize"]["longer_side"]
    assert set(spec["inputs"]) == {"images"}
    line = describe_preprocessing(spec)
    assert line.startswith("shorter side to 256 (bilinear, antialiased), centre crop 224, RGB")
    with_source = preprocessing_spec(112, 1.142857, IMAGENET_MEAN, IMAGENET_STD, source_size=448)
    assert with_source["resize"]["shorter_side"] == 512 and with_source["crop"]["size"] == 448
    assert "resized to 112 x 112" in with_source["inputs"]["images"]
