"""racnn predict: table and JSON output, attention pictures at the model's boxes, per-file errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_fixtures import CLASS_NAMES, IMAGE_SIZES, make_checkpoint, write_images
from racnn.cli import main
from racnn.cli.predict import viz_names
from racnn.inference.api import load
from racnn.pictures.visualize import (
    GAP,
    LINE_HEIGHT,
    MIN_PANEL,
    RIGHT_COLOR,
    SCALE_COLORS,
    WRONG_COLOR,
    attention_layout,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    images = write_images(root / "images")
    return {**images, "folder": root / "images", "checkpoint": make_checkpoint(root / "tiny.pt", list(images.values()))}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_has_one_row_per_image(files, capsys):
    code, out, err = run(capsys, "--checkpoint", files["checkpoint"], files["folder"])
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split()[:5] == ["file", "fused", "scale", "1", "scale"]
    assert len(rows) == len(IMAGE_SIZES)
    assert [Path(r.split()[0]).name for r in rows] == sorted(IMAGE_SIZES)  # folders are expanded sorted
    for row in rows:
        cells = row.split()[1:]  # name prob, four times (fused + 3 scales)
        assert len(cells) == 8 and all(name in CLASS_NAMES for name in cells[::2])
        assert all(0.0 <= float(p) <= 1.0 for p in cells[1::2])
    # reading with threads, in batches of 2: the same rows, in the same order
    assert run(capsys, "--checkpoint", files["checkpoint"], files["folder"], "-j", "2", "-b", "2")[:2] == (0, out)


def test_json_lines_match_the_api(files, capsys):
    paths = [files["wide.png"], files["tall.jpg"]]
    code, out, err = run(capsys, "--checkpoint", files["checkpoint"], *paths, "--json", "--topk", "3")
    assert code == 0, err
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in paths]
    expected = load(files["checkpoint"], device="cpu").predict(paths, topk=3)
    for record, prediction in zip(records, expected, strict=True):
        assert record["prediction"]["index"] == prediction.top.index
        assert record["prediction"]["prob"] == pytest.approx(prediction.top.prob, abs=1e-6)
        for scores in [*record["scales"].values(), *record["fused"].values()]:
            probs = [s["prob"] for s in scores]
            assert len(scores) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert set(record["fused"]) == {"1+2", "1+2+3"} and record["topk"] == record["fused"]["1+2+3"]
        assert record["boxes"]["2"] == pytest.approx(list(prediction.boxes[0]), abs=1e-4)


def test_save_viz_draws_the_models_boxes_on_the_original(files, tmp_path, capsys):
    path = files["wide.png"]
    code, out, err = run(capsys, "--checkpoint", files["checkpoint"], path, "--save-viz", tmp_path / "viz", "--json")
    assert code == 0, err
    [record] = [json.loads(line) for line in out.strip().splitlines()]
    viz = Image.open(record["viz"]).convert("RGB")
    assert Path(record["viz"]) == tmp_path / "viz" / "wide.png"

    [prediction] = load(files["checkpoint"], device="cpu").predict(path)  # the expected boxes, from the API
    layout = attention_layout(IMAGE_SIZES["wide.png"], ["scale 1", "scale 2", "scale 3"])
    width, height = layout.panel  # the 80 x 60 image, upscaled to a readable panel
    top = viz.height - height  # below the title, the legend and the captions
    assert height == MIN_PANEL and viz.width == width + 2 * (GAP + height) and top > 2 * LINE_HEIGHT
    text = {tuple(int(v) for v in c) for c in np.asarray(viz.crop((0, 0, viz.width, top))).reshape(-1, 3)}
    assert set(SCALE_COLORS[:2]) <= text  # the legend
    assert not {RIGHT_COLOR, WRONG_COLOR} & text  # no true class: nothing marked right or wrong
    px = viz.load()
    for s, (box, color) in enumerate(zip(prediction.boxes, SCALE_COLORS, strict=False)):
        zx, zy = layout.zoom
        x1, y1, x2, y2 = round(box[0] * zx), round(box[1] * zy), round(box[2] * zx), round(box[3] * zy)
        # points on the box's edges, away from the corners and clipped to the image
        points = [(min(max(x, 0), width - 1), y) for x in (x1, x2) for y in range(y1 + 3, y2 - 2)]
        points += [(x, min(max(y, 0), height - 1)) for y in (y1, y2) for x in range(x1 + 3, x2 - 2)]
        hits = sum(px[x, top + y] == color for x, y in points) / len(points)
        # the finest box is drawn last and fully visible; coarser ones may be crossed by finer ones
        assert hits == 1.0 if s == len(prediction.boxes) - 1 else hits > 0.8


def test_bad_files_are_reported_and_the_rest_still_processed(files, tmp_path, capsys):
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is not a JPEG")
    missing = tmp_path / "missing.png"
    good = files["square.png"]
    code, out, err = run(capsys, "--checkpoint", files["checkpoint"], fake, good, missing, "--json")
    assert code == 1
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["file"] for r in records] == [str(fake), str(good), str(missing)]
    assert "error" in records[0] and "not an image" in records[0]["error"]
    assert "prediction" in records[1] and "error" not in records[1]
    assert records[2]["error"] == "file not found"
    assert f"{fake}:" in err and f"{missing}:" in err and "2 of 3" in err

    code, out, err = run(capsys, "--checkpoint", files["checkpoint"], fake, good)  # table mode
    assert code == 1 and len(out.strip().splitlines()) == 2 and "fake.jpg" in err


def test_bad_checkpoint_is_a_usage_error_in_one_line(files, tmp_path, capsys):
    text = tmp_path / "model.pt"
    text.write_text("no checkpoint here")
    for checkpoint in (text, tmp_path / "missing.pt"):
        code, out, err = run(capsys, "--checkpoint", checkpoint, files["wide.png"])
        assert code == 2 and out == ""
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_viz_names_are_unique():
    paths = [Path("a/x.jpg"), Path("b/x.jpg"), Path("x.png"), Path("x-2.jpg")]
    names = viz_names(paths)
    assert names[:3] == ["x.png", "x-2.png", "x-3.png"] and len(set(names)) == 4


def test_exit_code_through_a_real_process(files, tmp_path):
    missing = tmp_path / "nope.jpg"
    result = subprocess.run(
        [sys.executable, "-m", "racnn", "predict", "--checkpoint", str(files["checkpoint"]), str(files["wide.png"])]
        + [str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "wide.png" in result.stdout and "nope.jpg" in result.stderr and "Traceback" not in result.stderr
