"""racnn app in a real browser: headless Chromium opens the page, photos are chosen and dropped as a person does, and
the answer, the boxes drawn on the photo (in the DOM and in the rendered pixels), the zoomed regions, a bad file's
message and the per-request file and size limits are checked. tests/chromium.py drives Chromium; without Chromium
(Debian: apt-get install chromium) the test is skipped, saying so.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="racnn app needs the app extra: pip install 'racnn[app]'")
pytest.importorskip("uvicorn", reason="racnn app needs the app extra: pip install 'racnn[app]'")

from chromium import BrowserError, Chromium, find_chromium  # noqa: E402
from inference_fixtures import IMAGE_SIZES, app_files  # noqa: E402
from racnn.app.server import BackgroundServer, Limits, create_app  # noqa: E402
from racnn.inference.api import Predictor, load  # noqa: E402
from racnn.pictures.visualize import SCALE_COLORS  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found: apt-get install chromium (or set RACNN_CHROMIUM=/path/to/chrome); .ci/run installs it",
)

# What the page shows for the first result card, read in the page.
SNAPSHOT = """(() => {
  const card = document.querySelector('.result[data-file="wide.png"]');
  const bad = document.querySelector('.result[data-file="notes.jpg"]');
  const stage = card.querySelector('.stage').getBoundingClientRect();
  return {
    label: card.querySelector('.fused-label').textContent,
    captions: [...card.querySelectorAll('figcaption')].map(c => c.textContent),
    viewBox: card.querySelector('svg.boxes').getAttribute('viewBox'),
    boxes: [...card.querySelectorAll('rect.box')].map(r => ({
      scale: r.dataset.scale, stroke: r.getAttribute('stroke'),
      xywh: ['x', 'y', 'width', 'height'].map(k => Number(r.getAttribute(k))),
    })),
    zooms: [...card.querySelectorAll('figure.zoom img')].map(i => [i.naturalWidth, i.naturalHeight]),
    topk: [...card.querySelectorAll('.topk .name')].map(n => n.textContent),
    error: bad.querySelector('.error').textContent,
    stage: {x: stage.x + scrollX, y: stage.y + scrollY, width: stage.width, height: stage.height},
  };
})()"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return app_files(tmp_path_factory.mktemp("app-browser"))


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return load(files["checkpoint"], device="cpu")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    except (BrowserError, OSError) as error:
        pytest.skip(f"Chromium ({CHROMIUM}) did not start: {str(error).splitlines()[0]}")
    yield chromium
    chromium.close()


def _extent(pixels: np.ndarray, rgb: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` of the pixels of exactly this colour (up to 10 per channel)."""
    ys, xs = np.nonzero((np.abs(pixels - np.array(rgb)) <= 10).all(-1))
    assert len(xs) > 50, f"hardly any {rgb} pixels: the box is not drawn"
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_page_shows_answer_boxes_zooms_and_a_bad_files_message(browser, predictor, files, tmp_path):
    limits = Limits(max_bytes=2 * 2**20)
    with BackgroundServer(create_app(predictor, limits, name="tiny.pt")) as server:
        page = browser.new_page(width=1200, height=900)
        page.goto(server.url + "/")
        said = page.wait_for("document.getElementById('limits').textContent")
        assert said.startswith("Up to 8 photos at once, 2 MB in all, 40 megapixels each")
        assert page.evaluate("document.getElementById('model').textContent").startswith("tiny.pt: tiny, 4 classes")

        page.set_files("#file-input", [files["wide.png"], files["notes.jpg"]])
        page.wait_for(
            "document.querySelectorAll('.result:not(.pending)').length === 2 && "
            "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        seen = page.evaluate(SNAPSHOT)
        [expected] = predictor.predict(files["wide.png"])

        # the answer: the fused label, each scale's, the fused top-k
        assert seen["label"] == expected.top.name
        assert seen["captions"] == [f"scale {s + 1}: {top[0].name} {100 * top[0].prob:.1f} %"
                                    for s, top in enumerate(expected.scales)]  # fmt: skip
        assert seen["topk"] == [c.name for c in expected.topk]
        # the boxes, in the photo's pixels and the attention pictures' colours; the zoomed regions beside them
        width, height = IMAGE_SIZES["wide.png"]
        assert seen["viewBox"] == f"0 0 {width} {height}"
        assert [b["scale"] for b in seen["boxes"]] == ["2", "3"]
        for box, want, rgb in zip(seen["boxes"], expected.boxes, SCALE_COLORS, strict=False):
            x1, y1, x2, y2 = want
            assert box["xywh"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
            assert box["stroke"] == "#{:02x}{:02x}{:02x}".format(*rgb)
        assert seen["zooms"] == [[48, 48], [48, 48]]
        # the bad file's own message, next to the good file's answer
        assert seen["error"] == "not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF"

        # the boxes as rendered: each colour's outline where the model's box lies, scaled to the shown photo
        stage = seen["stage"]
        pixels = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=stage))).convert("RGB"), dtype=np.int16)
        zoom = pixels.shape[1] / width
        for want, rgb in zip(expected.boxes, SCALE_COLORS, strict=False):
            drawn = _extent(pixels, rgb)
            assert drawn == pytest.approx([v * zoom for v in want], abs=3), (rgb, drawn)

        # a photo dropped on the page is classified too
        page.drop_files([files["tall.jpg"]], x=600, y=100)
        dropped = page.wait_for(
            "document.querySelector('.result[data-file=\"tall.jpg\"]:not(.pending) .fused-label')?.textContent"
        )
        assert dropped == predictor.predict(files["tall.jpg"])[0].top.name

        # more files than a request may hold: the page says so, as the server does
        many = []
        for i in range(9):
            many.append(tmp_path / f"photo{i}.png")
            shutil.copy(files["square.png"], many[-1])
        page.set_files("#file-input", many)
        message = page.wait_for("document.querySelector('.batch-error')?.textContent")
        assert message == "9 photos: too many files: 9 in one request, at most 8"

        # a photo over the upload limit: the server's answer, before it reads the upload, reaches the page
        page.evaluate("document.querySelector('.batch').remove()")
        big = tmp_path / "big.png"
        big.write_bytes(files["square.png"].read_bytes() + bytes(3 * 2**20))
        page.set_files("#file-input", [big])
        message = page.wait_for("document.querySelector('.batch-error')?.textContent")
        assert message == "big.png: upload of 3.0 MB is over the limit of 2 MB per request"
