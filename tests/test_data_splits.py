"""Validation splits: stratified, seeded, disjoint; the official one where a layout has it; never the test split."""

from __future__ import annotations

import pytest
import torch

from data_fixtures import make_cub
from racnn.config import ConfigError, load_config
from racnn.data.splits import SplitView, has_official_val, stratified_split
from racnn.training import build_datasets, build_split, object_boxes_in_input


def test_stratified_split_takes_the_fraction_of_every_class_and_keeps_each_class_in_train():
    targets = [0] * 20 + [1] * 10 + [2] * 2 + [3]
    train, val = stratified_split(targets, 0.1, seed=0)
    assert sorted(train + val) == list(range(len(targets))) and not set(train) & set(val)
    per_class = [sum(targets[i] == c for i in val) for c in range(4)]
    assert per_class == [2, 1, 1, 0]  # round(10 %), at least one, never the last image, none of a single image
    assert {targets[i] for i in train} == {0, 1, 2, 3}


def test_stratified_split_depends_only_on_labels_and_seed():
    targets = [i % 5 for i in range(100)]
    assert stratified_split(targets, 0.2, seed=3) == stratified_split(list(targets), 0.2, seed=3)
    assert stratified_split(targets, 0.2, seed=3)[1] != stratified_split(targets, 0.2, seed=4)[1]
    assert stratified_split(targets, 0.0, seed=0) == (list(range(100)), [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stratified_split(targets, 1.0)


def test_split_view_takes_index_aligned_data_at_its_indices():
    class Base(torch.utils.data.Dataset):
        classes = ["a", "b"]
        targets = [0, 1, 0, 1]
        samples = [("p0", 0), ("p1", 1), ("p2", 0), ("p3", 1)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i, self.targets[i]

        def object_boxes(self):
            return torch.arange(16.0).view(4, 4)

    view = SplitView(Base(), [3, 1], "val")
    assert len(view) == 2 and view[0] == (3, 1) and view.targets == [1, 1] and view.paths == ["p3", "p1"]
    assert view.classes == ["a", "b"] and view.split == "val"
    assert view.object_boxes().tolist() == [[12, 13, 14, 15], [4, 5, 6, 7]]
    assert not hasattr(view, "image_sizes")  # only what the underlying set has


def test_official_val_is_used_where_the_layout_has_one(tmp_path):
    assert has_official_val("aircraft", None, {}) and has_official_val("flowers", None, {"merge_val": False})
    assert not has_official_val("aircraft", None, {"merge_val": True})  # merged into train: not there to validate on
    assert not has_official_val("cub", tmp_path, {}) and not has_official_val("folder", tmp_path, {})
    (tmp_path / "val").mkdir()
    assert not has_official_val("folder", tmp_path, {})  # val/ alone is the folder's test split
    (tmp_path / "test").mkdir()
    assert has_official_val("folder", tmp_path, {})


def test_config_splits_are_disjoint_and_test_is_untouched(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=10)  # 5 training images per class
    cfg = load_config(None, ["data.dataset=cub", f"data.root={root}", "data.val_fraction=0.2", "model.input_size=32"])
    train, val, test = build_datasets(cfg, [0.5] * 3, [0.5] * 3)
    assert len(train) == 12 and len(val) == 3 and sorted(val.targets) == [0, 1, 2]
    assert not set(train.paths) & set(val.paths) and not (set(train.paths) | set(val.paths)) & set(test.paths)
    assert val[0][0].shape == (3, 32, 32)
    boxes = object_boxes_in_input(val, 32, cfg.data.resize_ratio)  # the val images' own object boxes
    assert boxes.shape == (3, 4) and not torch.isnan(boxes).any()
    cfg.data.val_fraction = 0.0
    assert build_datasets(cfg, [0.5] * 3, [0.5] * 3)[1] is None
    with pytest.raises(ConfigError, match="no validation split"):
        build_split(cfg, "val", [0.5] * 3, [0.5] * 3)


def test_synthetic_val_is_rendered_apart_from_train():
    cfg = load_config("synthetic_tiny", ["data.synthetic_train=40", "data.val_fraction=0.25", "model.input_size=32"])
    train, val, _ = build_datasets(cfg, [0.5] * 3, [0.5] * 3)
    assert len(train) == 40 and len(val) == 10 and val.split == "val"
    assert not torch.equal(train[0][0], val[0][0])
