"""Checkpoints: atomic weights_only files, the run folder, exact resume (in process and after SIGKILL)."""

from __future__ import annotations

import gc
import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import racnn.training as training
import racnn.training.run as training_run
from racnn.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from racnn.config import RECIPES, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = RECIPES / "synthetic_tiny.yaml"
TINY = [
    "model.input_size=32",
    "model.zoom_size=32",
    "model.apn_pool=2",
    "model.apn_hidden=16",
    "data.synthetic_train=48",
    "data.synthetic_test=20",
    "data.synthetic_classes=4",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.hflip=true",  # random augmentation, so that resuming has to reproduce it
    "data.resize_ratio=1.25",
    "train.rounds=1",
    "train.warmup.epochs=2",
    "train.apn_pretrain.epochs=1",
    "train.cls.epochs=1",
    "train.apn.epochs=1",
    "train.fusion.epochs=1",
    "train.visualize=false",
    "train.eval_interval=1",
    "train.keep_checkpoints=true",  # these tests read best.pt and last.pt of finished runs
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, *extra: str):
    return load_config(CONFIG, [*TINY, f"train.output_dir={tmp_path}", *extra])


def test_save_is_atomic_and_loads_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"config": {}, "model": {"w": torch.ones(2)}, "state": {"epoch": 3}})
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "racnn-checkpoint" and ckpt["state"]["epoch"] == 3
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a racnn checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_folder_contents(tmp_path):
    result = training.fit(_config(tmp_path, "train.warmup.epochs=1", "train.visualize=true", "train.tensorboard=true"))
    run = result.run_dir
    assert run == tmp_path / "synthetic_tiny"
    files = ["config.yaml", "metrics.csv", "curves.png", "last.pt", "best.pt", "model.safetensors", "metrics.json"]
    files += ["confusion.csv", "confusion.png", "attention_round0.png", "attention_round1.png"]
    for name in files:
        assert (run / name).is_file(), name
    if importlib.util.find_spec("tensorboard") is not None:
        assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    else:  # TensorBoard is optional: without it the run goes on and writes no event files
        assert not (run / "tensorboard").exists()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and rows[0].startswith("phase,phase_index,round,epoch")
    last = load_checkpoint(run / "last.pt")  # weights_only=True, RNG states and all
    assert last["config"]["model"]["num_classes"] == 4  # resolved from the data set
    assert last["class_names"][:2] == ["red-cyan horizontal", "red-cyan diagonal-down"]
    assert last["state"]["phase_index"] == 5 and last["state"]["global_epoch"] == 5
    assert set(last["rng"]) == {"torch", "cuda", "python", "numpy"}
    best = load_checkpoint(run / "best.pt")
    # Selection reads val only; the fused head while it is trained, the mean of the scales before.
    chosen = [r.get("val_top1_fused", r.get("val_top1_avg")) for r in result.history]
    assert best["state"]["best"] == max(chosen) and "untrained" in rows[0]
    assert set(best["trained_heads"]) >= {"s1", "s2", "s3", "avg"}
    model, cfg, names = load_model(run / "best.pt")
    assert cfg.model.num_classes == 4 and names == last["class_names"]

    from safetensors import safe_open

    with safe_open(run / "model.safetensors", "pt") as f:
        assert json.loads(f.metadata()["config"])["model"]["num_classes"] == 4
        assert torch.equal(f.get_tensor("classifiers.0.weight"), last["model"]["classifiers.0.weight"])
    # A second run with the same name gets a fresh folder.
    assert training.fit(_config(tmp_path, "train.warmup.epochs=0", "train.rounds=0")).run_dir.name == "synthetic_tiny-1"


def test_a_branch_into_a_taken_folder_gets_the_next_name(tmp_path):
    from racnn.training.run_files import branch_run

    source = save_checkpoint(tmp_path / "phase1.pt", {"config": {}, "model": {}, "state": {"best": 0.5}})
    (tmp_path / "branch").mkdir()
    out = branch_run(source, _config(tmp_path), tmp_path / "branch")
    assert out.name == "branch-1" and (out / "config.yaml").is_file()
    assert load_checkpoint(out / "last.pt")["state"]["best"] is None  # the branch chooses among its own epochs
    assert not any((tmp_path / "branch").iterdir())  # the taken folder is left alone


@pytest.mark.parametrize(
    ("interval", "tested"), [(1, [1, 2, 3, 4, 5, 6]), (2, [2, 3, 4, 5, 6]), (0, [2, 3, 4, 5, 6]), (-1, [6])]
)
def test_eval_interval_decides_after_which_epochs_the_val_set_runs(tmp_path, interval, tested):
    """Schedule: warm-up 2, APN pre-training 1, cls 1, APN 1, fusion 1 (global epochs 1-6)."""
    cfg = _config(tmp_path, f"train.eval_interval={interval}", "train.visualize=false")
    result = training.fit(cfg)
    assert [row["global_epoch"] for row in result.history if "val_top1_avg" in row] == tested
    assert not any(key.startswith("top1_") for row in result.history for key in row)  # no test reading in training
    assert result.metrics["n_images"] == cfg.data.synthetic_test  # the test split, read once at the end
    assert (result.run_dir / "metrics.json").is_file() and (result.run_dir / "best.pt").is_file()


def _interrupt_after(monkeypatch, epochs: set[int]) -> None:
    """Ctrl-C right after the given global epochs have been saved."""
    real = training_run._Run._end_epoch

    def end_epoch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state["global_epoch"] in epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_run._Run, "_end_epoch", end_epoch)


def test_resume_gives_identical_weights(tmp_path, monkeypatch, caplog):
    straight = training.fit(_config(tmp_path / "a"))
    assert len(straight.history) == 6

    _interrupt_after(monkeypatch, {1, 3})  # mid-warm-up (optimiser, scheduler restored), then at a phase boundary
    cfg = _config(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg)
    run = tmp_path / "b" / "synthetic_tiny"
    assert f"racnn train --resume {run}" in caplog.text  # the racnn logger's warning
    assert load_checkpoint(run / "last.pt")["state"]["global_epoch"] == 1
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg, resume=run)
    monkeypatch.undo()
    # The rest with two persistent loader workers: the data must not depend on them.
    resumed = training.fit(_config(tmp_path / "b", "data.num_workers=2"), resume=run / "last.pt")

    a = load_checkpoint(straight.run_dir / "last.pt")["model"]
    b = load_checkpoint(run / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed.metrics == straight.metrics
    timing = ("train_images_per_s", "elapsed_s", "time_left_s")
    strip = [{k: v for k, v in row.items() if k not in timing} for row in resumed.history]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in straight.history]


def test_a_run_ends_its_loader_workers(tmp_path):
    """fit() frees its run: no persistent worker process outlives it, even with the garbage collector off (a later
    collection could run inside the next run's forked workers and print tracebacks there)."""
    gc.disable()
    try:
        training.fit(_config(tmp_path, "data.num_workers=1", "train.warmup.epochs=0", "train.apn.epochs=0"))
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()


def test_data_does_not_depend_on_loader_workers(tmp_path):
    """Augmentation is seeded per (seed, epoch, index): 0 or 2 worker processes give the same batches."""
    train_set = training.build_split(_config(tmp_path), "train", mean=[0.5] * 3, std=[0.5] * 3)
    batches = []
    for workers in (0, 2):
        loader, sampler = training.make_train_loader(train_set, 8, seed=3, num_workers=workers)
        sampler.set_epoch(5)
        batches.append([images for images, _ in loader])
    assert all(torch.equal(x, y) for x, y in zip(*batches, strict=True))
    sampler.set_epoch(6)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])


def test_resume_after_sigkill_mid_epoch(tmp_path):
    args = [sys.executable, "-m", "racnn", "train", "--config", str(CONFIG)]
    for item in [*TINY, "data.synthetic_train=320", "train.warmup.epochs=3", f"train.output_dir={tmp_path}"]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "synthetic_tiny"
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved = load_checkpoint(run / "last.pt")["state"]["global_epoch"]
    assert 1 <= saved < 7

    done = subprocess.run([sys.executable, "-m", "racnn", "train", "--resume", str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_checkpoint(run / "last.pt")["state"]
    assert [row["global_epoch"] for row in state["history"]] == list(range(1, 8))
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 7


@pytest.mark.parametrize("init", ["classifiers", "random"])
def test_fusion_phase_starts_from_the_summed_classifiers(tmp_path, init):
    """With a zero learning rate the fusion phase leaves its heads where ``train.fusion_init`` put them."""
    result = training.fit(_config(tmp_path, f"train.fusion_init={init}", "train.fusion.lr=0", "train.eval_interval=-1"))
    weights = load_checkpoint(result.run_dir / "last.pt")["model"]
    head = weights["fusion.1+2+3.weight"]  # (K, 3C)
    blocks = head.chunk(3, dim=1)
    for s, block in enumerate(blocks):
        w = weights[f"classifiers.{s}.weight"]
        ratio = (block * w).sum() / w.square().sum()  # the least-squares scale of block s onto classifier s
        assert torch.allclose(block, ratio * w, atol=1e-6) == (init == "classifiers")
        assert ratio > 0 or init == "random"
    bias_sum = sum(weights[f"classifiers.{s}.bias"] for s in range(3))
    assert torch.allclose(weights["fusion.1+2+3.bias"], bias_sum) == (init == "classifiers")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_and_weights_are_written_with_the_umask(tmp_path, umask, mode):
    from racnn.checkpoint import save_model_file
    from racnn.config import Config
    from racnn.modeling.model import RACNN

    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "best.pt", {"config": {}, "model": {"w": torch.ones(2)}})
        model = RACNN("tiny", 2, 2, input_size=32, zoom_size=32, apn_pool=2, apn_hidden=4)
        save_model_file(model, Config(), ["a", "b"], tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    for name in ("best.pt", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_backbone_kwargs_are_stored_and_rebuild_the_model(tmp_path):
    from racnn.config import Config, config_to_dict
    from racnn.modeling.model import RACNN

    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_kwargs = "timm:vit_tiny_patch16_224", {"img_size": 64}
    cfg.model.num_classes, cfg.model.num_scales, cfg.model.input_size, cfg.model.zoom_size = 3, 2, 64, 64
    cfg.model.apn_pool, cfg.model.apn_hidden = 2, 8
    torch.manual_seed(0)
    model = RACNN.from_config(cfg.model)
    save_checkpoint(tmp_path / "m.pt", {"config": config_to_dict(cfg), "model": model.state_dict()})
    loaded, loaded_cfg, _ = load_model(tmp_path / "m.pt")
    assert loaded_cfg.model.backbone_kwargs == {"img_size": 64}
    pos_embed = "backbones.0.body.model.pos_embed"
    assert loaded.state_dict()[pos_embed].shape == (1, 17, 192)  # 4 x 4 patches + the class token, not 14 x 14
    assert torch.equal(loaded.state_dict()[pos_embed], model.state_dict()[pos_embed])


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_checkpoint_written_before_the_folders_still_loads(tmp_path):
    """tests/fixtures/racnn_0.1_tiny.pt was written by racnn 0.1.0 when every module sat at the package root (before
    issue #24): it loads through racnn.load and answers as it did then (same classes, probabilities, boxes)."""
    import racnn
    from inference_fixtures import write_images

    recorded = json.loads((FIXTURES / "racnn_0.1_tiny.json").read_text())["predictions"]
    images = write_images(tmp_path)
    predictor = racnn.load(FIXTURES / "racnn_0.1_tiny.pt", device="cpu", amp="none")
    for name, expected in recorded.items():
        prediction = predictor.predict(images[name], topk=4)[0]
        assert [c.index for c in prediction.topk] == [index for index, _ in expected["topk"]]
        probs = torch.tensor([float(c.prob) for c in prediction.topk])
        assert torch.allclose(probs, torch.tensor([p for _, p in expected["topk"]]), atol=1e-5)
        boxes = torch.tensor([[float(v) for v in box] for box in prediction.boxes])
        assert torch.allclose(boxes, torch.tensor(expected["boxes"]), atol=1e-2)
