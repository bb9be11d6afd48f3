"""Training-step throughput and single-image inference latency of RA-CNN on this machine, per speed switch.

Defaults are the paper's configuration: three VGG-19 scales (random init: speed does not depend on the weights),
448 px whole image, 224 px zoomed regions, batch 2, 200 classes, the classification phase (the most expensive
one: every backbone trains). Each measurement runs in a fresh subprocess, so its peak memory is that process's
maximum resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, Python and the
torch libraries included, not just tensors). Prints a markdown table.

  python benchmarks/bench_train.py                       # the paper config, about 6-8 minutes on 2 cores
  python benchmarks/bench_train.py --backbone tiny --input-size 96 --zoom-size 64 --steps 5 --classes 10
  python benchmarks/bench_train.py --backbone tf_efficientnet_lite0 --input-size 112 --zoom-size 224 \
      --source-size 199 --classes 50 --batch 16 --modes default   # zooms sampled from a 199 px source

With ``--source-size M`` every step and inference also gets the same images at ``M`` px, which the zooms are
sampled from (``data.source_size``; ``RACNN.forward(images, source)``): its cost in images/s and memory.
``--regions K`` zooms into K regions per scale (``model.regions``; each finer backbone runs on B x K images).

Modes:
  fp32            eager float32 (the reference)
  fp32+cl         float32, channels-last model and inputs (train.channels_last=true)
  fp32+cl+compile the same under torch.compile (train.compile=true); may take minutes to compile, or fail
  bf16+cl         bf16 autocast + channels-last (train.amp=bf16); skipped on a CPU without oneDNN bf16 kernels
                  (AVX-512 BF16 / AMX), where convolutions fall back to a 10-20x slower path (--force-bf16 runs it)
  bf16w+cl        inference only: the weights themselves in bfloat16, channels-last (same condition)
  default         what `racnn train` (with the paper recipe's train.amp / train.channels_last) and `racnn predict`
                  choose on this machine (racnn.precision.choose_precision; amp auto: bf16 where the device has
                  fast bf16 kernels, else fp32); inference as the Predictor runs it (weights cast once, no_grad)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TRAIN_MODES = ["fp32", "fp32+cl", "fp32+cl+compile", "bf16+cl", "default"]
INFER_MODES = ["fp32", "fp32+cl", "fp32+cl+compile", "bf16+cl", "bf16w+cl", "default"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vgg19", help="backbone name (default: vgg19)")
    parser.add_argument("--input-size", type=int, default=448, help="scale-1 input side (default: 448)")
    parser.add_argument("--zoom-size", type=int, default=224, help="zoomed input side (default: 224)")
    parser.add_argument("--source-size", type=int, default=0, help="side of a source view, 0: none (default: 0)")
    parser.add_argument("--scales", type=int, default=3, help="number of scales (default: 3)")
    parser.add_argument("--regions", type=int, default=1, help="attention regions per zoomed scale (default: 1)")
    parser.add_argument("--classes", type=int, default=200, help="number of classes (default: 200)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per mode (default: 3)")
    parser.add_argument("--images", type=int, default=5, help="timed single-image inferences per mode (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    parser.add_argument("--modes", default="all", help="comma-separated modes to run (default: all)")
    parser.add_argument("--compile-timeout", type=int, default=240, help="seconds before a compile run is abandoned")
    parser.add_argument("--force-bf16", action="store_true", help="run the bf16 modes even without oneDNN bf16")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "train:MODE" or "infer:MODE"
    return parser


def _model(args):
    import torch

    from racnn.modeling.model import RACNN

    torch.manual_seed(0)
    return RACNN(args.backbone, args.classes, args.scales, args.input_size, args.zoom_size, regions=args.regions)


def _inputs(args, batch: int, dtype=None, channels_last: bool = False) -> list:
    """The model's inputs: ``[images]``, or ``[images, source]`` with ``--source-size``."""
    import torch

    sides = [args.input_size] + ([args.source_size] if args.source_size else [])
    views = [torch.randn(batch, 3, side, side, dtype=dtype) for side in sides]
    return [v.contiguous(memory_format=torch.channels_last) for v in views] if channels_last else views


def _switches(mode: str):
    """(amp, channels_last, compile, bf16 weights) of a mode."""
    return (
        "bf16" if mode.startswith("bf16+") else "none",
        "cl" in mode,
        mode.endswith("compile"),
        mode.startswith("bf16w"),
    )


def _default_precision(train):
    """What racnn chooses on this machine's CPU for ``train.amp`` and ``train.channels_last``."""
    import torch

    from racnn.precision import choose_precision

    return choose_precision(train.amp, torch.device("cpu"), train.channels_last)


def run_train(args, mode: str) -> dict:
    """Steps of the classification phase through the training package's own epoch function."""
    from dataclasses import replace

    import torch

    from racnn.config import TrainConfig, load_config
    from racnn.training import StepContext, prepare_phase, train_classification_epoch

    amp, channels_last, compile_, _ = _switches(mode)
    chosen = None
    if mode == "default":  # the paper recipe's run settings, resolved as racnn train resolves them
        recipe = load_config("paper_vgg19_cub").train
        chosen = _default_precision(recipe)
        amp, channels_last, compile_ = chosen.amp, chosen.channels_last, recipe.compile
    model = _model(args)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(prepare_phase(model, "cls"), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    net = torch.compile(model) if compile_ else None
    images = _inputs(args, args.batch)  # a batch's images: a tensor, or the pair [images, source]
    images = images[0] if len(images) == 1 else images
    targets = torch.randint(0, args.classes, (args.batch,))
    ctx = StepContext(train=replace(TrainConfig(), amp=amp, channels_last=channels_last))
    start = time.perf_counter()
    train_classification_epoch(model, [(images, targets)], optimizer, None, ctx, net=net)  # warm-up step
    first = time.perf_counter() - start
    stats = train_classification_epoch(model, [(images, targets)] * args.steps, optimizer, None, ctx, net=net)
    result = {"images_per_s": stats["images_per_s"], "first_step_s": first}
    return {**result, "precision": chosen.describe()} if chosen else result


def run_infer_default(args) -> dict:
    """Single images the way :class:`racnn.inference.api.Predictor` runs them on this machine (``amp="auto"``)."""
    import torch

    from racnn.config import TrainConfig
    from racnn.pictures.model_pictures import eval_forward
    from racnn.precision import inference_input, prepare_for_inference

    chosen = _default_precision(TrainConfig(amp="auto", channels_last=True))  # the Predictor's defaults
    model = prepare_for_inference(_model(args), torch.device("cpu"), chosen)
    inputs = [inference_input(view, chosen) for view in _inputs(args, 1)]
    with torch.no_grad():
        start = time.perf_counter()
        eval_forward(model, *inputs)  # warm-up
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.images):
            out = eval_forward(model, *inputs)
        seconds = (time.perf_counter() - start) / args.images
    assert torch.isfinite(out.fused["+".join(str(s + 1) for s in range(args.scales))]).all()
    return {"seconds_per_image": seconds, "first_call_s": first, "precision": chosen.describe()}


def run_infer(args, mode: str) -> dict:
    import torch

    if mode == "default":
        return run_infer_default(args)
    amp, channels_last, compile_, bf16_weights = _switches(mode)
    model = _model(args).eval()
    dtype = torch.bfloat16 if bf16_weights else torch.float32
    model.to(dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    inputs = _inputs(args, 1, dtype, channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        net(*inputs)  # warm-up (and compilation)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.images):
            out = net(*inputs)
        seconds = (time.perf_counter() - start) / args.images
    assert torch.isfinite(out.fused["+".join(str(s + 1) for s in range(args.scales))]).all()
    return {"seconds_per_image": seconds, "first_call_s": first}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    kind, mode = args.worker.split(":", 1)
    result = run_train(args, mode) if kind == "train" else run_infer(args, mode)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(args, kind: str, mode: str) -> dict:
    argv = [sys.executable, __file__, "--worker", f"{kind}:{mode}"]
    names = ("backbone", "input_size", "zoom_size", "source_size", "scales", "regions", "classes", "batch", "steps")
    names += ("images",)
    for name in (*names, "threads"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    timeout = args.compile_timeout if mode.endswith("compile") else None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"gave up after {timeout} s (compiling)"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}


def main() -> None:
    args = get_args_parser().parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    wanted = None if args.modes == "all" else set(args.modes.split(","))
    skip_bf16 = not (args.force_bf16 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    rows = []
    for mode in dict.fromkeys(TRAIN_MODES + INFER_MODES):
        if wanted is not None and mode not in wanted:
            continue
        if skip_bf16 and mode.startswith("bf16"):  # "default" never is: it takes bf16 only where it is fast
            skipped = {"error": "skipped: no oneDNN bf16 on this CPU"}
            rows.append((mode, skipped if mode in TRAIN_MODES else {}, skipped if mode in INFER_MODES else {}))
            continue
        train = _spawn(args, "train", mode) if mode in TRAIN_MODES else {}
        infer = _spawn(args, "infer", mode) if mode in INFER_MODES else {}
        rows.append((mode, train, infer))
        print(f"{mode}: train {train} infer {infer}", file=sys.stderr, flush=True)

    print(
        f"\n{args.scales} x {args.backbone}, {args.input_size} / {args.zoom_size} px"
        f"{f', zooms from a {args.source_size} px source' if args.source_size else ''}"
        f"{f', {args.regions} regions per zoomed scale' if args.regions > 1 else ''}, {args.classes} classes; "
        f"train: batch {args.batch}, classification phase, {args.steps} timed steps; inference: batch 1, "
        f"{args.images} timed; torch {torch.__version__}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}\n"
    )
    print("| mode | train images/s | train peak RSS GiB | inference s/image | inference peak RSS GiB |")
    print("|---|---:|---:|---:|---:|")
    for mode, train, infer in rows:
        if mode == "default":
            chosen = train.get("precision") or infer.get("precision")
            mode = f"default ({chosen.removeprefix('precision: ')})" if chosen else mode
        print(
            f"| {mode} | {_cell(train, 'images_per_s', '.2f')} | {_cell(train, 'peak_rss_gib', '.2f')} "
            f"| {_cell(infer, 'seconds_per_image', '.3f')} | {_cell(infer, 'peak_rss_gib', '.2f')} |"
        )


def _cell(result: dict, key: str, fmt: str) -> str:
    if not result:
        return "-"
    if "error" in result:
        return result["error"] if result["error"].startswith("skipped") else f"failed: {result['error']}"
    return format(result[key], fmt)


if __name__ == "__main__":
    main()
