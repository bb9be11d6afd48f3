"""``racnn export``: export a checkpoint to ONNX or TorchScript, then check the export against the PyTorch model.

The exported graph takes one input and gives three outputs (B is dynamic, S scales, K classes):

  images  (B, 3, N, N)  float32, normalised with the backbone's mean/std (N = model.input_size)
  probs   (B, K)        softmax of the all-scale fusion head: the overall prediction
  logits  (S, B, K)     each scale's own classifier logits, scale 1 first
  boxes   (S-1, B, 3)   attention boxes (tx, ty, tl) of scales 2..S in the input's normalised coordinates;
                        (S-1, B, R, 3) for a model with R > 1 regions per scale (model.regions)

A JSON sidecar <out>.json holds the class names, the preprocessing stated exactly (resize filter and
antialiasing, rounding, crop, mean/std, channel order) and the output names. After writing,
the export runs on a random batch of a different size than the one traced and is compared with the PyTorch
model, output by output (probs, each scale's logits, each zoomed scale's box): an output passes when every
element has |export - torch| <= atol + rtol * |torch| + 4 * noise, where noise is how far PyTorch's own float32
output lies from the same model in float64 (the zoomed scales amplify float32 rounding of the crops' sample
positions: docs/INFERENCE.md); the command fails (exit 1) naming each output that does not. --no-check skips
the comparison; an ONNX export without onnxruntime installed is written unchecked, with a note (--check makes
that an error).

Example:
  racnn export --checkpoint runs/cub --format onnx --out racnn.onnx
"""

# The exporting itself is racnn.inference.export (torch); this module holds the command, and imports it only in
# main(), so that ``racnn export --help`` is instant.

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from racnn.cli.errors import OutputError, fail, writable_folder
from racnn.cli.flags import CHECKPOINT_HELP, add_amp, add_batch_size
from racnn.config import ConfigError
from racnn.safety import describe_os_error, printable, same_file, share_like_open

if TYPE_CHECKING:  # torch-side types, not imported at run time (racnn export --help stays instant)
    from racnn.inference.parity import Parity
    from racnn.precision import Precision

# racnn.inference.export.DEFAULT_OPSET, written out so that --help needs no torch (a test keeps them equal)
OPSET_HELP = 20
MIN_OPSET = 16  # the attention crop's GridSample
# racnn.inference.parity.RTOL / ATOL / NOISE_FACTOR, written out for the same reason (the same test)
RTOL, ATOL, NOISE_FACTOR = 1e-3, 1e-4, 4.0
ONNXRUNTIME_HINT = "pip install onnxruntime, or pip install 'racnn[export]'"
MAX_BATCH = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="export format")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write (sidecar: PATH.json)")
    parser.add_argument("--opset", type=int, default=None, metavar="N", help=f"ONNX opset (default {OPSET_HELP})")
    add_batch_size(parser, f"batch size of the traced example, at most {MAX_BATCH}", 2, aliases=("--batch",))
    parser.add_argument(
        "--rtol", type=float, default=RTOL, help=f"parity check's relative tolerance per element (default {RTOL:g})"
    )
    parser.add_argument(
        "--atol",
        "--tolerance",
        type=float,
        default=ATOL,
        help=f"parity check's absolute tolerance: |export - torch| <= atol + rtol * |torch| + {NOISE_FACTOR:g} * "
        f"noise, noise being how far PyTorch's own float32 output lies from float64 (default {ATOL:g})",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare the export with PyTorch (default: yes; an ONNX export is left unchecked, with a note, when "
        "onnxruntime is not installed; --check makes that an error); --no-check skips the comparison",
    )
    add_amp(
        parser, "auto",
        "the precision racnn predict would use (auto: bf16 on a CPU with oneDNN bf16 kernels, else fp32); when it is "
        "not fp32, also print how far the model in it lies from the float32 export, for information",
    )  # fmt: skip


def _max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes (20 in torch 2.14)."""
    from torch.onnx import _constants

    from racnn.inference.export import DEFAULT_OPSET

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET))


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before the model is loaded, what would fail after a slow export or replace a file it should not."""
    from racnn.inference.export import DEFAULT_OPSET

    if args.opset is None:
        args.opset = DEFAULT_OPSET
    if args.batch_size > MAX_BATCH:
        raise ConfigError(f"--batch-size must be between 1 and {MAX_BATCH}, got {args.batch_size}")
    for flag in ("rtol", "atol"):
        if getattr(args, flag) != getattr(args, flag):  # NaN: every comparison would fail
            raise ConfigError(f"--{flag} must be a number, got nan")
    if args.format == "onnx" and args.check and not _onnxruntime_installed():
        raise ConfigError(
            f"--check: checking an ONNX export needs onnxruntime, which is not installed: {ONNXRUNTIME_HINT}"
        )
    if args.format == "onnx" and not MIN_OPSET <= args.opset <= _max_opset():
        raise ConfigError(
            f"--opset {args.opset}: the attention crop's grid_sample needs opset {MIN_OPSET} or newer, and this torch "
            f"exports up to {_max_opset()}; use --opset {DEFAULT_OPSET}"
        )
    check_out(Path(args.out), Path(args.checkpoint), args.format)


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_out(out: Path, checkpoint: Path, fmt: str) -> None:
    """``out`` and its sidecar ``out.json`` may be written: never the checkpoint itself (through any link or
    spelling), never a folder, and an existing file only when it is an earlier racnn export of the same format,
    which its sidecar says."""
    sidecar = Path(f"{out}.json")
    for path in (out, sidecar):
        if same_file(path, checkpoint):
            raise OutputError(f"--out {out}: {path} is the checkpoint being exported; choose another path")
        if path.is_dir():
            raise OutputError(f"--out {out}: {path} is a folder; give a file name such as {path / 'racnn.onnx'}")
    writable_folder(out.parent, "--out")
    if (out.exists() or sidecar.exists()) and not _earlier_export(sidecar, fmt):
        existing = out if out.exists() else sidecar
        raise OutputError(
            f"--out {out}: {existing} exists and {sidecar.name} does not mark it as an earlier racnn {fmt} export; "
            "racnn export does not replace it: choose another path"
        )


def _earlier_export(sidecar: Path, fmt: str) -> bool:
    from racnn.inference.export import OUTPUT_NAMES

    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == fmt and meta.get("output_names") == list(OUTPUT_NAMES)


def _export_beside(out: Path, write) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``out``, then rename it over ``out``: a failed export keeps
    the earlier one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        write(Path(name))
        share_like_open(name)  # the mode a plain open() gives, not mkstemp's private 0600
        os.replace(name, out)
    finally:
        Path(name).unlink(missing_ok=True)


def main(args: argparse.Namespace) -> int:
    import torch

    from racnn.checkpoint import CheckpointError, load_model
    from racnn.inference.api import model_normalization
    from racnn.inference.export import precision_drift
    from racnn.inference.hub import hub_folder, is_hub_name
    from racnn.precision import choose_precision

    try:
        check_arguments(args)
        precision = choose_precision(args.amp, torch.device("cpu"))  # the check runs on the CPU
        checkpoint = hub_folder(args.checkpoint) if is_hub_name(args.checkpoint) else args.checkpoint
        model, cfg, class_names = load_model(checkpoint, map_location="cpu")  # exports are device-neutral
    except (CheckpointError, ConfigError) as e:
        return fail("", e)
    try:
        code = _export(args, model, cfg, class_names, model_normalization(model))
    except OSError as e:  # the export could not be written (no permission, disk full); an earlier one is kept
        if isinstance(e, BrokenPipeError):
            raise
        return fail("", describe_os_error(e, target=args.out), code=1)
    if precision.amp != "none" and code != 2:
        size, source = cfg.model.input_size, cfg.data.source_size
        drift = precision_drift(model, size, precision, batch_size=args.batch_size + 1, source_size=source)
        print(drift_line(precision, drift))
    return code


def drift_line(precision: Precision, drift: Parity) -> str:
    """What ``racnn predict`` in ``precision`` changes against the float32 export, in words: the output that moves
    most (its largest absolute difference, and how large its values are) and the probabilities."""
    worst = max((o for o in drift.outputs if o.name != "probs"), key=lambda o: o.max_abs)
    probs = next(o for o in drift.outputs if o.name == "probs")
    bits = {"bf16": 8, "fp16": 11}.get(precision.amp, 24)
    return (
        f"{precision.describe()}: racnn predict here (weights cast to {precision.amp}, {bits} significant bits) "
        f"differs from the export by up to {worst.max_abs:.3g} in {worst.name} (values up to {worst.scale:.3g}) "
        f"and {probs.max_abs:.3g} in probs, on a random batch (information, not part of the check)"
    )


def _export(args: argparse.Namespace, model, cfg, class_names: list[str], normalization) -> int:
    from racnn.inference.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript, write_sidecar

    size = cfg.model.input_size
    out = Path(args.out)
    check = args.check is not False
    batch = args.batch_size + 1  # checked on another batch size than the traced one: the batch axis must be dynamic
    tolerance = {"rtol": args.rtol, "atol": args.atol}
    source = {"source_size": cfg.data.source_size}  # a second input, the zooms' source, where the model has one
    if args.format == "onnx":
        check = check and _onnxruntime_installed()  # --check without it was refused in check_arguments
        _export_beside(
            out, lambda tmp: export_onnx(model, tmp, size, batch_size=args.batch_size, opset=args.opset, **source)
        )
        parity = verify_onnx(model, out, size, batch_size=batch, **tolerance, **source) if check else None
        extra = {"opset": args.opset}
    else:
        _export_beside(out, lambda tmp: export_torchscript(model, tmp, size, batch_size=args.batch_size, **source))
        parity = verify_torchscript(model, out, size, batch_size=batch, **tolerance, **source) if check else None
        extra = {}
    mean, std = normalization
    sidecar = write_sidecar(
        out,
        format=args.format,
        class_names=class_names,
        input_size=size,
        mean=mean,
        std=std,
        num_scales=cfg.model.num_scales,
        regions=cfg.model.regions,
        source_size=cfg.data.source_size,
        resize_ratio=cfg.data.resize_ratio,
        extra={**extra, "backbone": cfg.model.backbone},
    )
    print(printable(f"wrote {out} and {sidecar}"))
    if parity is None:
        why = "--no-check" if args.check is False else f"onnxruntime is not installed ({ONNXRUNTIME_HINT})"
        print(f"note: parity with PyTorch not checked: {why}", file=sys.stderr)
        return 0
    print(
        f"parity with PyTorch (batch {batch}, traced with {args.batch_size}): max abs difference "
        f"{parity.max_abs:.3g} ({'ok' if parity.ok else 'FAILED'}, tolerance {parity.rule()}, noise: how far "
        "PyTorch's own float32 output lies from float64)"
    )
    print(f"  largest for its values: {parity.worst.describe()}")
    for line in parity.failures():
        print(f"  FAILED {line}")
    return 0 if parity.ok else 1
