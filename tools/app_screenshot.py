"""The README's picture of ``racnn app``: a real run of the app, photos chosen in headless Chromium, a screenshot.

Renders a few test images of the built-in synthetic set (at a larger size than the model's input, so the page
shows them sharply), starts the app on a free 127.0.0.1 port, chooses the photos on the page as a person does
(tests/chromium.py), waits for the answers and saves a screenshot of the page as a small palette PNG.

  racnn demo --no-baseline --output-dir runs                  # a checkpoint trained on the synthetic set
  python tools/app_screenshot.py --checkpoint runs/demo --out docs/images/app.png
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chromium import Chromium, find_chromium  # noqa: E402
from racnn.app.server import BackgroundServer, create_app  # noqa: E402
from racnn.data.synthetic import SyntheticFineGrained  # noqa: E402
from racnn.inference.api import load  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint trained on the synthetic set")
    parser.add_argument("--out", default="docs/images/app.png", help="where to write the PNG")
    parser.add_argument("--indices", type=int, nargs="+", default=[5, 10], help="synthetic test images to upload")
    parser.add_argument("--size", type=int, default=320, help="side of the rendered photos (default 320)")
    parser.add_argument("--width", type=int, default=1100, help="browser window width (default 1100)")
    parser.add_argument("--colors", type=int, default=128, help="palette size of the saved PNG (default 128)")
    return parser


def main() -> None:
    args = get_args_parser().parse_args()
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium found: apt-get install chromium (or set RACNN_CHROMIUM)")
    predictor = load(args.checkpoint, device="cpu")
    data = SyntheticFineGrained(
        num_samples=max(args.indices) + 1,
        num_classes=len(predictor.class_names),
        image_size=args.size,
        seed=predictor.config.data.synthetic_seed,
        split="test",
    )
    with tempfile.TemporaryDirectory() as tmp:
        photos = []
        for index in args.indices:
            image, label = data.render(index), data.targets[index]
            name = f"{data.classes[label].replace(' ', '-')}-{index}.png"  # the true class, in the file name
            photos.append(Path(tmp) / name)
            Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(photos[-1])
        app = create_app(predictor, name=Path(args.checkpoint).name)
        with BackgroundServer(app) as server, Chromium(binary, Path(tmp) / "profile") as browser:
            page = browser.new_page(width=args.width, height=800)
            page.goto(server.url + "/")
            page.wait_for("document.getElementById('limits').textContent")
            page.set_files("#file-input", photos)
            page.wait_for(
                f"document.querySelectorAll('.result:not(.pending)').length === {len(photos)} && "
                "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            answers = page.evaluate("[...document.querySelectorAll('.fused-label')].map(e => e.textContent)")
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {shot.width} x {shot.height}, {size / 1024:.0f} KB; answers: {answers}")
    for photo, answer in zip(photos, answers, strict=True):
        print(f"  {photo.name}: {answer}")


if __name__ == "__main__":
    main()
