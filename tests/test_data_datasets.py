"""Data sets in their official layouts, on small fabricated copies and on the real cub50 subset."""

from __future__ import annotations

import sys

import pytest
import torch
from torchvision.datasets import Flowers102 as TorchvisionFlowers

from data_fixtures import (
    AIRCRAFT_FAMILIES,
    AIRCRAFT_VARIANTS,
    CAR_CLASSES,
    CUB50,
    make_aircraft,
    make_cars,
    make_cub,
    make_dogs,
    make_flowers,
    make_folder,
    red_label,
    write_image,
)
from racnn.data import (
    CUB200,
    DATASETS,
    DatasetIntegrityError,
    DatasetLayoutError,
    MissingExtraError,
    build_dataset,
    dataset_names,
)


def assert_labels_match_images(dataset, modulo: int | None = None) -> None:
    """Every sample's image colour encodes its label (see data_fixtures.label_colour)."""
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape[0] == 3 and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert red_label(image) == (label % modulo if modulo else label), dataset.samples[i][0]


def test_registry_names_and_unknown_name():
    assert dataset_names() == sorted(["cub", "dogs", "cars", "aircraft", "flowers", "folder", "synthetic"])
    assert set(DATASETS) == set(dataset_names())
    with pytest.raises(ValueError, match="valid names: aircraft, cars, cub, dogs, flowers, folder, synthetic"):
        build_dataset("birds", "/nowhere", "train")


def test_unknown_option_and_split_are_named(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['zoom'\].*valid options: skip_bad_files, strict"):
        build_dataset("cub", root, "train", zoom=2)
    with pytest.raises(ValueError, match="split 'val' is not available for 'cub'; available: train, test"):
        build_dataset("cub", root, "val")


@pytest.mark.parametrize("boxes", [True, False])
def test_cub_layout(tmp_path, boxes):
    root = make_cub(tmp_path / "CUB_200_2011", per_class=4, boxes=boxes)
    train = build_dataset("cub", root, "train")
    test = build_dataset("cub", root, "test")
    assert isinstance(train, CUB200) and train.name == "cub" and train.root == root
    assert (len(train), len(test)) == (6, 6)
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 0, 1, 1, 2, 2]
    assert train.classes == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert train.raw_classes[0] == "001.Black_footed_Albatross"
    assert train.image_ids == [1, 3, 5, 7, 9, 11] and test.image_ids == [2, 4, 6, 8, 10, 12]
    assert all(p.endswith(".jpg") for p in train.paths) and all(p.endswith(".png") for p in test.paths)
    assert_labels_match_images(train)
    assert_labels_match_images(test)
    if boxes:
        assert train.has_boxes
        # image id 3 is the 3rd image of class 0 (k = 2): box (1 + k, 2, 10.5 + c, 8)
        assert train.get_box(1) == (3.0, 2.0, 10.5, 8.0) == train.boxes[1]
        assert test.get_box(5) == (4.0, 2.0, 12.5, 8.0)
        # normalised xyxy in each original image (20 x 16 px)
        assert torch.equal(train.image_sizes(), torch.tensor([[16.0, 20.0]] * 6))
        expected = torch.tensor([3 / 20, 2 / 16, 13.5 / 20, 10 / 16])
        assert torch.allclose(train.object_boxes()[1], expected) and train.object_boxes().shape == (6, 4)
    else:
        assert not train.has_boxes and train.boxes is None and train.object_boxes() is None
        with pytest.raises(ValueError, match="no bounding_boxes.txt"):
            train.get_box(0)


def test_cub_parent_folder_is_accepted(tmp_path):
    make_cub(tmp_path / "CUB_200_2011")
    dataset = build_dataset("cub", tmp_path, "train")
    assert dataset.root == tmp_path / "CUB_200_2011" and len(dataset) == 6


@pytest.mark.parametrize("lists_folder", [True, False])
def test_dogs_layout(tmp_path, lists_folder):
    root = make_dogs(tmp_path / "dogs", per_class=3, lists_folder=lists_folder)
    train = build_dataset("dogs", root, "train")
    test = build_dataset("dogs", root, "test")
    assert (len(train), len(test)) == (6, 3)
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 1, 2]
    assert train.classes == ["Chihuahua", "Japanese spaniel", "Maltese dog"]
    assert train.raw_classes == ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    assert test.paths[1].endswith("Images/n02085782-Japanese_spaniel/n02085782_1002.jpg")
    assert_labels_match_images(train)
    assert_labels_match_images(test)


def test_dogs_label_folder_mismatch_is_reported(tmp_path):
    from data_fixtures import write_dogs_list

    root = make_dogs(tmp_path / "dogs")
    files = ["n02085620-Chihuahua/n02085620_1000.jpg", "n02085782-Japanese_spaniel/n02085782_1000.jpg"]
    write_dogs_list(root / "lists" / "test_list.mat", files, [1, 3])
    with pytest.raises(DatasetIntegrityError, match="has label 3 .*n02085936-Maltese_dog.* but lies in folder"):
        build_dataset("dogs", root, "test")
    write_dogs_list(root / "lists" / "test_list.mat", files, [1, 121])
    with pytest.raises(DatasetIntegrityError, match="has label 121, expected 1..3"):
        build_dataset("dogs", root, "test")


def test_cars_layout_through_torchvision(tmp_path):
    root = make_cars(tmp_path)
    train = build_dataset("cars", root, "train")
    test = build_dataset("cars", root / "stanford_cars", "test")  # the inner folder is accepted too
    assert train.root == test.root == tmp_path
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == CAR_CLASSES
    assert train.targets == [0, 1, 2, 0, 1, 2] and test.targets == [0, 1, 2]
    assert train.paths[0].endswith("stanford_cars/cars_train/00001.jpg")
    assert_labels_match_images(train)
    assert_labels_match_images(test)


def test_cars_missing_files_are_listed(tmp_path):
    root = make_cars(tmp_path)
    (root / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    build_dataset("cars", root, "train")  # the train split does not need it
    with pytest.raises(DatasetLayoutError, match="Missing:\n  stanford_cars/cars_test_annos_withlabels.mat"):
        build_dataset("cars", root, "test")


def test_aircraft_layout_levels_and_splits(tmp_path):
    root = make_aircraft(tmp_path)
    train = build_dataset("aircraft", root, "train")  # trainval by default
    test = build_dataset("aircraft", root, "test")
    assert train.classes == AIRCRAFT_VARIANTS and train.annotation_level == "variant"
    assert (len(train), len(test)) == (9, 3)
    assert sorted(train.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.targets == [0, 1, 2]
    assert_labels_match_images(train)
    assert_labels_match_images(test)

    only_train = build_dataset("aircraft", root, "train", merge_val=False)
    val = build_dataset("aircraft", root, "val", merge_val=False)
    assert (len(only_train), len(val)) == (6, 3)
    assert set(only_train.paths) | set(val.paths) == set(train.paths)
    with pytest.raises(ValueError, match="merge_val=False"):
        build_dataset("aircraft", root, "val")

    family = build_dataset("aircraft", root, "test", annotation_level="family")
    assert family.classes == AIRCRAFT_FAMILIES and family.targets == [0, 1, 2]
    with pytest.raises(ValueError, match="annotation_level must be one of"):
        build_dataset("aircraft", root, "test", annotation_level="model")


def test_aircraft_unknown_label_is_reported(tmp_path):
    root = make_aircraft(tmp_path)
    path = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    path.write_text(path.read_text() + "1000099 Concorde\n")
    with pytest.raises(DatasetIntegrityError, match="images_variant_test.txt: label 'Concorde' is not listed"):
        build_dataset("aircraft", root, "test")


def test_flowers_layout(tmp_path):
    root, ids, labels = make_flowers(tmp_path)
    train = build_dataset("flowers", root, "train")  # train + val by default
    test = build_dataset("flowers", root, "test")
    assert train.classes == TorchvisionFlowers.classes and len(train.classes) == 102
    assert (len(train), len(test)) == (105, 4)
    assert test.targets == [0, 1, 2, 101]
    assert test.paths[0].endswith("flowers-102/jpg/image_00106.jpg")
    assert train.targets == [labels[i - 1] - 1 for i in ids["trnid"] + ids["valid"]]
    assert_labels_match_images(test, modulo=6)
    val = build_dataset("flowers", root / "flowers-102", "val", merge_val=False)
    assert val.root == tmp_path and val.targets == [4, 5, 6]
    assert len(build_dataset("flowers", root, "train", merge_val=False)) == 102


def test_folder_layout_and_fallbacks(tmp_path):
    root = make_folder(tmp_path / "val_only", eval_split="val")
    train = build_dataset("folder", root, "train")
    assert train.classes == ["cat", "dog", "fox"] and len(train) == 9  # notes.txt is ignored
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    test = build_dataset("folder", root, "test")  # falls back to val/
    assert test.split_dir == root / "val" and test.targets == [0, 1, 2]
    assert_labels_match_images(train)
    assert_labels_match_images(test)

    root = make_folder(tmp_path / "test_only", eval_split="test")
    assert build_dataset("folder", root, "val").split_dir == root / "test"

    root = make_folder(tmp_path / "neither", eval_split=None)
    with pytest.raises(DatasetLayoutError, match="Missing:\n  test/\n  val/"):
        build_dataset("folder", root, "test")
    with pytest.raises(DatasetLayoutError, match="Missing:\n  train/"):
        build_dataset("folder", tmp_path / "empty", "train")


def test_folder_eval_class_not_in_train_is_an_error(tmp_path):
    root = make_folder(tmp_path, eval_split="val")
    write_image(root / "val" / "wolf" / "wolf_0.jpg", 0)
    with pytest.raises(DatasetIntegrityError, match="val/wolf: class folder not in train/"):
        build_dataset("folder", root, "val")
    lenient = build_dataset("folder", root, "val", strict=False)
    assert len(lenient) == 3 and any("val/wolf" in p for p in lenient.problems)


def test_transform_is_applied(tmp_path):
    root = make_folder(tmp_path)
    dataset = build_dataset("folder", root, "train", transform=lambda image: image.size)
    assert dataset[0] == ((20, 16), 0)


@pytest.mark.skipif(not CUB50.is_dir(), reason=f"real cub50 subset not found at {CUB50}")
def test_real_cub50_loads():
    train = build_dataset("cub", CUB50, "train")
    test = build_dataset("cub", CUB50, "test")
    assert (len(train), len(test)) == (1473, 1479)
    assert len(train.classes) == 50 == len(set(train.targets)) == len(set(test.targets))
    assert train.classes[0] == "Black footed Albatross" and train.raw_classes[0] == "001.Black_footed_Albatross"
    assert not train.has_boxes
    assert not set(train.paths) & set(test.paths)
    image, label = test[len(test) - 1]
    assert image.shape == (3, 227, 227) and label == 49


@pytest.mark.parametrize("name, make", [("flowers", make_flowers), ("dogs", make_dogs), ("cars", make_cars)])
def test_mat_layouts_without_scipy_name_the_extra(tmp_path, monkeypatch, name, make):
    made = make(tmp_path / name)
    root = made[0] if isinstance(made, tuple) else made
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy.io` raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(MissingExtraError, match=rf'the {name} layout reads MATLAB .* pip install "racnn\[mat\]"'):
        build_dataset(name, root, "train")
