"""``racnn data verify`` on good and broken fabricated copies."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from data_fixtures import make_aircraft, make_cub, make_dogs, make_folder, truncate, write_image, write_noise_jpeg
from racnn.cli import main
from racnn.cli import verify as verify_cli
from racnn.data.verify import verify_dataset


def run_verify(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    code = verify_cli.main(parser.parse_args(argv))
    return code, capsys.readouterr().out


def test_good_copy_exits_zero_with_a_table(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=4)
    code, out = run_verify(["--dataset", "cub", "--root", str(root), "--workers", "2"], capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("Data set: cub") and "classes: 3" in lines[0]
    assert any(line.split()[:3] == ["train", "6", "3/3"] for line in lines)
    assert any(line.split()[:3] == ["test", "6", "3/3"] for line in lines)
    assert "2 (Black footed Albatross)" in out
    assert "Bad files: none" in out and "Problems: none" in out and out.rstrip().endswith("Result: OK")


def test_broken_copy_exits_nonzero_and_names_each_problem(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=4)
    images = root / "images"
    cut = truncate(write_noise_jpeg(images / "001.Black_footed_Albatross" / "Black_footed_Albatross_0000.jpg"))
    fake = images / "002.Laysan_Albatross" / "Laysan_Albatross_0000.jpg"
    fake.write_text("not an image")
    gone = images / "003.Sooty_Albatross" / "Sooty_Albatross_0001.png"
    gone.unlink()
    labels = root / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("2 1\n", "2 42\n"))
    listing = root / "images.txt"
    listing.write_text(listing.read_text() + "4 001.Black_footed_Albatross/again.jpg\n")

    code, out = run_verify(["--dataset", "cub", "--root", str(root)], capsys)
    assert code == 1
    assert "Result: FAILED (5 issue(s))" in out
    assert f"{cut}: OSError" in out and "truncated" in out
    assert f"{fake}: not an image file PIL can identify" in out
    assert f"{gone}: file not found" in out
    assert "image id 2 (001.Black_footed_Albatross/Black_footed_Albatross_0001.png) has label 42" in out
    assert "images.txt line 13: duplicate id 4 (first on line 4)" in out
    assert out.count("duplicate id 4") == 1  # reported once although both splits read the files


def test_quick_mode_still_catches_truncation(tmp_path):
    root = make_folder(tmp_path)
    cut = truncate(write_noise_jpeg(root / "val" / "dog" / "big.jpg"))
    report = verify_dataset("folder", root, full=False)
    assert not report.ok and list(report.bad_files) == [str(cut)]
    assert report.splits["val"].num_images == 4 and report.splits["val"].num_bad == 1


def test_missing_split_file_is_named(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / "train_test_split.txt").unlink()
    code, out = run_verify(["--dataset", "cub", "--root", str(root), "--split", "train"], capsys)
    assert code == 1 and "Missing:\n  train_test_split.txt" in out and "Result: FAILED (1 issue(s))" in out


def test_folder_problems_are_listed_not_raised(tmp_path):
    root = make_folder(tmp_path)
    write_image(root / "val" / "wolf" / "w.jpg", 0)
    for path in (root / "train" / "fox").iterdir():
        path.unlink()
    report = verify_dataset("folder", root)
    assert not report.ok
    assert any("val/wolf: class folder not in train/" in p for p in report.problems)
    assert any("class 'fox' (label 2) has no training images" in p for p in report.problems)
    assert report.splits["train"].fewest == (0, "fox") and report.splits["train"].num_classes_present == 2


def test_dogs_and_aircraft_options(tmp_path, capsys):
    assert verify_dataset("dogs", make_dogs(tmp_path / "dogs")).ok
    root = make_aircraft(tmp_path / "air")
    report = verify_dataset("aircraft", root)
    assert report.ok and list(report.splits) == ["train", "test"] and report.splits["train"].num_images == 9
    code, out = run_verify(
        [
            "--dataset",
            "aircraft",
            "--root",
            str(root),
            "--option",
            "merge_val=false",
            "--option",
            "annotation_level=family",
        ],
        capsys,
    )
    assert code == 0 and [line.split()[0] for line in out.splitlines()[4:7]] == ["train", "val", "test"]
    assert "(Boeing 707)" in out


def test_synthetic_and_usage_errors(capsys):
    code, out = run_verify(
        ["--dataset", "synthetic", "--option", "num_samples=12", "--option", "num_classes=4"], capsys
    )
    assert code == 0 and "3 (red-cyan horizontal)" in out
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "imagenet", "--root", "x"])
    assert "unknown data set 'imagenet'; valid names: aircraft, cars, cub" in capsys.readouterr().err
    assert verify_cli.main(parser.parse_args(["--dataset", "cub"])) == 2


def test_racnn_data_verify_command(tmp_path, capsys):
    root = make_folder(tmp_path)
    assert main(["data", "verify", "--dataset", "folder", "--root", str(root), "--quick", "-j", "2"]) == 0
    assert "Result: OK" in capsys.readouterr().out
    assert main(["data", "verify", "--dataset", "folder", "--root", str(Path(tmp_path) / "absent")]) == 1
