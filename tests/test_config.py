"""Configuration: YAML + overrides, helpful errors, the shipped recipes, the resolved config in every run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import racnn.training as training
from racnn.config import (
    RECIPES,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    per_apn,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(RECIPES.glob("*.yaml"))


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_scales: 2\ntrain:\n  cls:\n    lr: 0.01\n")
    cfg = load_config(path, ["train.cls.lr=0.5", "train.amp=bf16", "data.options.cache=true", "train.warmup.epochs=3"])
    assert cfg.model.num_scales == 2 and cfg.train.cls.lr == 0.5 and cfg.train.amp == "bf16"
    assert cfg.data.options == {"cache": True} and cfg.train.warmup.epochs == 3
    assert cfg.train.cls.momentum == 0.9  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.marign=0.1", "did you mean 'train.margin'"),
        ("trian.margin=0.1", "did you mean 'train'"),
        ("train.cls.learning_rate=0.1", "unknown config key 'train.cls.learning_rate'"),
        ("train.rounds=two", "'train.rounds' expects an integer"),
        ("train.amp=fp8", "train.amp must be auto, none, bf16 or fp16"),
        ("train.cls.optimizer=adam", "train.cls.optimizer must be sgd or adamw"),
        ("model.num_scales=5", "model.num_scales must be 2, 3 or 4"),
        ("train.pretrain_side=0", "train.pretrain_side must be in"),
        ("train.pretrain_side=[0.3,0]", "train.pretrain_side must be in"),
        ("train.pretrain_side=[0.3]", "one number or one per APN (2 with 3 scales), got [0.3]"),
        ("train.pretrain_side=[0.3,abc]", "'train.pretrain_side[1]' expects a finite number"),
        ("model.fixed_side=[0.5,0.5,0.5]", "model.fixed_side must be one number or one per APN"),
        ("model.fixed_side=[0.5,2]", "model.fixed_side must be 0 (learnt boxes) or in (0, 1]"),
        ("train.eval_interval=-2", "train.eval_interval must be -1, 0 or positive"),
        ("margin", "not of the form key=value"),
    ],
)
def test_override_errors_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_unknown_key_in_a_file_names_the_file_and_the_nearest_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  warmpu:\n    epochs: 1\n")
    with pytest.raises(
        ConfigError, match=r"typo\.yaml: unknown config key 'train\.warmpu'; did you mean 'train\.warmup'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_document_every_key(path):
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*[A-Za-z_]+:", line):
            assert "#" in line, f"{path.name}:{number} has no comment: {line.strip()}"


def test_shipped_configs_cover_the_paper_and_the_cpu_recipe():
    names = {p.name for p in CONFIGS}
    assert {"paper_vgg19_cub.yaml", "cpu_lite0_cub50.yaml", "synthetic_tiny.yaml"} <= names
    paper = load_config(RECIPES / "paper_vgg19_cub.yaml")
    assert (paper.model.backbone, paper.model.input_size, paper.model.zoom_size) == ("vgg19", 448, 224)
    assert paper.model.num_scales == 3 and paper.train.margin == 0.05 and paper.train.cls.momentum == 0.9


def test_training_doc_names_every_key():
    doc = (REPO / "docs" / "TRAINING.md").read_text()
    cfg = Config()
    missing = []
    for section in ("model", "data", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            if f"`{f.name}`" not in doc and f"{section}.{f.name}" not in doc:
                missing.append(f"{section}.{f.name}")
    for f in dataclasses.fields(cfg.train.cls):
        if f"`{f.name}`" not in doc:
            missing.append(f"train.<phase>.{f.name}")
    assert not missing, missing


def test_resolved_config_in_run_folder_and_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = [f"train.output_dir={tmp_path}", "model.input_size=32", "model.zoom_size=32", "model.apn_hidden=8",
                     "data.synthetic_train=16", "data.synthetic_test=8", "data.synthetic_classes=3",
                     "train.rounds=0", "train.warmup.epochs=1", "train.apn_pretrain.epochs=0", "train.fusion.epochs=0",
                     "train.visualize=false"]  # fmt: skip
        result = training.fit(load_config(RECIPES / "synthetic_tiny.yaml", overrides))
    finally:
        torch.set_num_threads(threads)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    from safetensors import safe_open

    with safe_open(str(result.run_dir / "model.safetensors"), "pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert saved == stored
    assert saved["model"]["num_classes"] == 3  # 0 in the file: resolved from the data set
    assert saved["data"]["synthetic_train"] == 16 and saved["train"]["output_dir"] == str(tmp_path)


def test_backbone_kwargs_from_yaml_and_overrides():
    assert Config().model.backbone_kwargs == {}
    cfg = load_config(None, ["model.backbone=timm:vit_tiny_patch16_224", "model.backbone_kwargs={img_size: 448}"])
    assert cfg.model.backbone_kwargs == {"img_size": 448}
    cfg = load_config(None, ["model.backbone_kwargs.dynamic_img_size=true", "model.backbone_kwargs.img_size=64"])
    assert cfg.model.backbone_kwargs == {"dynamic_img_size": True, "img_size": 64}
    assert config_from_dict(config_to_dict(cfg)).model.backbone_kwargs == cfg.model.backbone_kwargs
    with pytest.raises(ConfigError, match="model.backbone_kwargs.img_size must be a number, a string"):
        load_config(None, ["model.backbone_kwargs={img_size: {a: 1}}"])
    with pytest.raises(ConfigError, match="'model.backbone_kwargs' expects a mapping"):
        load_config(None, ["model.backbone_kwargs=448"])


def test_per_apn_settings_take_one_value_or_one_per_apn(tmp_path):
    cfg = load_config(None, ["train.pretrain_side=[0.25,0.5]", "model.fixed_side=[0.5,0.8]"])
    assert cfg.train.pretrain_side == [0.25, 0.5] and cfg.model.fixed_side == [0.5, 0.8]
    assert per_apn(cfg.train.pretrain_side, 3) == [0.25, 0.5]
    assert per_apn(0.4, 4) == [0.4, 0.4, 0.4]  # one value for every APN
    save_config(cfg, tmp_path / "config.yaml")  # and back, unchanged
    assert load_config(tmp_path / "config.yaml").train.pretrain_side == [0.25, 0.5]
    assert load_config(None, ["train.pretrain_side=0.3"]).train.pretrain_side == 0.3  # a number stays a number
