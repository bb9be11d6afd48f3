"""Robust loading: mode conversions, bad files, bad annotations, skip_bad_files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import make_cub, make_dogs, make_folder, red_label, truncate, write_dogs_list, write_noise_jpeg
from racnn.data import (
    DatasetIntegrityError,
    DatasetLayoutError,
    ImageLoadError,
    SkippedImagesWarning,
    build_dataset,
    check_image_file,
    load_image,
)

# -- mode conversions ----------------------------------------------------------------------------------------------


def _saved(tmp_path, image: Image.Image, name: str, **kwargs) -> Image.Image:
    path = tmp_path / name
    image.save(path, **kwargs)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == image.size
    return loaded


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), mode="L")
    rgb = np.asarray(_saved(tmp_path, gray, "gray.png"))
    assert (rgb == np.array([[0, 100], [200, 255]])[..., None]).all()
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    assert np.asarray(_saved(tmp_path, bilevel, "bw.png")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = np.asarray(_saved(tmp_path, image, "deep.png"))
    assert rgb[..., 0].tolist() == [[0, 1, 128, 255]] and (rgb[..., 0] == rgb[..., 2]).all()
    # mode "I" (32-bit integers, as some readers return 16-bit data): same 16-bit scaling
    as_int = Image.fromarray(values.astype(np.int32))
    assert as_int.mode == "I"
    assert np.asarray(_saved(tmp_path, as_int, "deep.tif"))[..., 1].tolist() == [[0, 1, 128, 255]]


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    assert np.asarray(_saved(tmp_path, palette, "p.png")).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    # index 1 transparent: composited on white
    transparent = _saved(tmp_path, palette, "p_t.png", transparency=1)
    assert np.asarray(transparent).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    gif = _saved(tmp_path, palette, "p_t.gif", transparency=1)
    assert np.asarray(gif).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.fromarray(np.array([[[0, 0, 0, 255], [0, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8), mode="RGBA")
    pixels = np.asarray(_saved(tmp_path, rgba, "rgba.png"))
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 1].tolist() == [255, 255, 255]
    assert abs(int(pixels[0, 2, 0]) - 127) <= 1  # half-transparent black on white
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), mode="LA")
    assert np.asarray(_saved(tmp_path, la, "la.png")).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    pixels = np.asarray(_saved(tmp_path, cmyk, "cmyk.jpg", quality=100))
    assert (np.abs(pixels.astype(int) - [255, 0, 0]) <= 3).all()


def test_sixteen_bit_png_through_a_data_set(tmp_path):
    root = make_folder(tmp_path)
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(root / "train" / "dog" / "deep.png")
    dataset = build_dataset("folder", root, "train")
    image, label = dataset[dataset.paths.index(str(root / "train" / "dog" / "deep.png"))]
    assert label == 1 and float(image.min()) == 1.0


# -- bad image files -----------------------------------------------------------------------------------------------


def test_truncated_jpeg_names_file_and_data_set(tmp_path):
    path = truncate(write_noise_jpeg(tmp_path / "cut.jpg"))
    with pytest.raises(ImageLoadError, match=r"cannot load image .*cut\.jpg \(data set 'cub'\): OSError.*truncated"):
        load_image(path, dataset="cub")
    assert "truncated" in check_image_file(path)
    assert check_image_file(write_noise_jpeg(tmp_path / "good.jpg")) is None


def test_non_image_with_jpg_name(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("<html>not found</html>")
    with pytest.raises(ImageLoadError, match=r"fake\.jpg.*not an image file PIL can identify") as info:
        load_image(path)
    assert info.value.path == str(path) and isinstance(info.value, ValueError)
    assert check_image_file(path) == "not an image file PIL can identify"
    assert check_image_file(tmp_path / "absent.jpg") == "file not found"


def test_bad_file_in_a_data_set_raises_by_default(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    dataset = build_dataset("cub", root, "train")
    truncate(write_noise_jpeg(Path(dataset.paths[2])))
    with pytest.raises(ImageLoadError, match=rf"{dataset.paths[2]} \(data set 'cub'\)"):
        dataset[2]


def _break_three_files(dataset) -> list[str]:
    truncated = truncate(write_noise_jpeg(Path(dataset.paths[0])))
    Path(dataset.paths[3]).write_bytes(b"not an image at all")
    Path(dataset.paths[4]).unlink()
    return [str(truncated), dataset.paths[3], dataset.paths[4]]


def test_skip_bad_files_counts_and_warns_once(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    bad = _break_three_files(build_dataset("cub", root, "train"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset("cub", root, "train", skip_bad_files=True)
        samples = [dataset[i] for i in range(len(dataset))]
    skipped = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert "skipped 3 unreadable image file(s) of 6" in message
    assert all(path in message for path in bad)
    assert sorted(dataset.bad_files) == sorted(bad)
    assert "truncated" in dataset.bad_files[bad[0]] and dataset.bad_files[bad[2]] == "file not found"
    assert len(dataset) == 3 and len(dataset.targets) == 3 and len(dataset.boxes) == 3
    assert [label for _, label in samples] == dataset.targets == [0, 1, 2]
    assert [red_label(image) for image, _ in samples] == dataset.targets


def test_file_that_breaks_after_the_check_is_replaced_at_load_time(tmp_path):
    root = make_folder(tmp_path)
    dataset = build_dataset("folder", root, "train", skip_bad_files=True)
    Path(dataset.paths[2]).write_bytes(b"corrupted later")  # cat_2, label 0
    Path(dataset.paths[3]).write_bytes(b"corrupted later")  # dog_0, label 1
    with pytest.warns(SkippedImagesWarning, match="cat_2.png") as caught:
        image, label = dataset[2]  # replaced by the next readable sample: dog_1
    assert len(caught) == 1 and label == 1 and red_label(image) == 1
    assert sorted(dataset.bad_files) == sorted(dataset.paths[2:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning in this process
        assert dataset[3][1] == 1 and dataset[2][1] == 1


# -- bad annotations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["train_test_split.txt", "image_class_labels.txt", "images.txt"])
def test_missing_annotation_file_lists_the_layout(tmp_path, missing):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / missing).unlink()
    with pytest.raises(DatasetLayoutError) as info:
        build_dataset("cub", root, "train")
    message = str(info.value)
    assert message.split("Missing:")[1].split() == [missing]
    for expected in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        assert expected in message.split("Missing:")[0]
    assert info.value.missing == [missing] and isinstance(info.value, FileNotFoundError)


def test_missing_dogs_split_list(tmp_path):
    root = make_dogs(tmp_path)
    (root / "lists" / "test_list.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"(?s)lists/train_list\.mat.*Missing:\n  lists/test_list\.mat"):
        build_dataset("dogs", root, "test")


def _rewrite(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_label_out_of_range(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    _rewrite(root / "image_class_labels.txt", "5 2\n", "5 99\n")
    with pytest.raises(DatasetIntegrityError, match=r"labels.txt line \d+: image id 5 .* has label 99, expected"):
        build_dataset("cub", root, "train")


def test_duplicate_image_ids(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    path = root / "images.txt"
    path.write_text(path.read_text() + "3 002.Laysan_Albatross/extra.jpg\n")
    with pytest.raises(DatasetIntegrityError, match=r"images.txt line 13: duplicate id 3 \(first on line 3\)"):
        build_dataset("cub", root, "test")


def test_class_without_training_images(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    for image_id in (9, 11):  # the training images of class 3
        _rewrite(root / "train_test_split.txt", f"{image_id} 1\n", f"{image_id} 0\n")
    with pytest.raises(DatasetIntegrityError, match="class '003.Sooty_Albatross' .* has no training images"):
        build_dataset("cub", root, "test")
    lenient = build_dataset("cub", root, "train", strict=False)
    assert len(lenient) == 4 and len(lenient.problems) == 1


def test_class_without_training_images_in_dogs(tmp_path):
    root = make_dogs(tmp_path)
    write_dogs_list(root / "lists" / "train_list.mat", ["n02085620-Chihuahua/n02085620_1000.jpg"], [1])
    with pytest.raises(DatasetIntegrityError, match="class 'Japanese spaniel' .* has no training images"):
        build_dataset("dogs", root, "train")


def test_many_problems_are_summarised(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / "image_class_labels.txt").write_text("".join(f"{i} 7\n" for i in range(1, 13)))
    with pytest.raises(DatasetIntegrityError) as info:
        build_dataset("cub", root, "train")
    assert len(info.value.problems) == 12 + 3  # 12 labels out of range, then 3 classes without training images
    assert "racnn data verify --dataset cub" in str(info.value)


def test_unreadable_mat_file(tmp_path):
    root = make_dogs(tmp_path)
    (root / "lists" / "train_list.mat").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DatasetIntegrityError, match="train_list.mat: cannot read MATLAB file"):
        build_dataset("dogs", root, "train")


def test_missing_file_and_extension_independence(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nothing.png")
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "png_data.jpg", format="PNG")  # content decides, not name
    assert np.asarray(load_image(tmp_path / "png_data.jpg")).tolist() == [[[1, 2, 3]] * 2] * 2
