"""A tiny trained RA-CNN checkpoint and a few small images, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from racnn.checkpoint import save_checkpoint
from racnn.config import Config, ModelConfig, config_to_dict
from racnn.inference.api import Predictor
from racnn.modeling.model import RACNN

CLASS_NAMES = ["sparrow", "warbler", "wren", "finch"]
IMAGE_SIZES = {"wide.png": (80, 60), "tall.jpg": (50, 90), "square.png": (70, 70)}  # name -> (W, H)


def tiny_config(num_classes: int = len(CLASS_NAMES)) -> Config:
    return Config(
        model=ModelConfig(backbone="tiny", num_classes=num_classes, input_size=64, zoom_size=48, apn_hidden=32)
    )


def _image_array(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus a bright square: structure that survives resizing."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [127 + 100 * np.sin(xs / (7 + 3 * c) + ys / (11 + c) + phase[c]) for c in range(3)]
    image = np.stack(channels, axis=-1)
    x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    image[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.uniform(200, 255, 3)
    return image.clip(0, 255).astype(np.uint8)


def write_images(folder: Path) -> dict[str, Path]:
    """A few small non-square and square images, PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (name, (width, height)) in enumerate(IMAGE_SIZES.items()):
        path = folder / name
        Image.fromarray(_image_array(width, height, seed)).save(path, quality=95)
        paths[name] = path
    return paths


def make_checkpoint(path: Path, images: list[Path], steps: int = 4, seed: int = 0) -> Path:
    """A tiny RA-CNN trained for a few SGD steps to tell ``images`` apart (so its predictions are not ties)."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    model = RACNN.from_config(cfg.model)
    predictor = Predictor(model, cfg, CLASS_NAMES)  # only for its test-time transform
    batch = torch.stack([predictor.transform(Image.open(p).convert("RGB")) for p in images])
    targets = torch.arange(len(images)) % len(CLASS_NAMES)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        out = model(batch)
        loss = sum(torch.nn.functional.cross_entropy(x, targets) for x in [*out.logits, *out.fused.values()])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_checkpoint(
        path, {"config": config_to_dict(cfg), "model": model.state_dict(), "class_names": CLASS_NAMES}
    )


def app_files(root: Path) -> dict[str, Path]:
    """The app tests' inputs: the test photos, a text file named like a photo, and a tiny checkpoint."""
    images = write_images(root / "images")
    (root / "notes.jpg").write_text("a text file named like a photo")
    return {
        **images,
        "notes.jpg": root / "notes.jpg",
        "checkpoint": make_checkpoint(root / "tiny.pt", [*images.values()]),
    }
