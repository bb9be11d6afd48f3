"""Export a checkpoint to ONNX or TorchScript, then check the export against the PyTorch model.

The exported graph takes one input and gives three outputs (B is dynamic, S scales, K classes):

  images  (B, 3, N, N)  float32, normalised with the backbone's mean/std (N = model.input_size)
  probs   (B, K)        softmax of the all-scale fusion head: the overall prediction
  logits  (S, B, K)     each scale's own classifier logits, scale 1 first
  boxes   (S-1, B, 3)   attention boxes (tx, ty, tl) of scales 2..S in the input's normalised coordinates

A JSON sidecar <out>.json holds the class names, input size, mean/std and the output names. After writing,
the export runs on a random batch of a different size than the one traced and is compared with the PyTorch
model: the maximum absolute difference is printed and the command fails (exit 1) above --tolerance. The export
and that check are float32; where --amp (default auto) gives bf16 on this machine, as racnn predict would run, how
far the model in bf16 lies from the export is printed too, for information.

Example:
  racnn export --checkpoint runs/cub/best.pt --format onnx --out racnn.onnx
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from racnn.checkpoint import CheckpointError
from racnn.cli_errors import OutputError, fail, writable_folder
from racnn.config import ConfigError
from racnn.model import RACNN
from racnn.precision import (
    AMP_CHOICES,
    CHECKPOINT_HELP,
    Precision,
    choose_precision,
    inference_input,
    prepare_for_inference,
)
from racnn.safety import describe_os_error, printable, same_file

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ExportWrapper",
    "export_onnx",
    "export_torchscript",
    "verify_onnx",
    "verify_torchscript",
    "write_sidecar",
]

INPUT_NAME = "images"
OUTPUT_NAMES = ("probs", "logits", "boxes")
# The attention crop's grid sampling (GridSample) needs opset 16; 20 also has AffineGrid. Checked with torch 2.14's
# TorchScript-based exporter and onnxruntime 1.32.
DEFAULT_OPSET = 20
MIN_OPSET = 16  # GridSample
TOLERANCE = 1e-4


class ExportWrapper(nn.Module):
    """The model with plain tensor outputs, for tracing: ``images -> (probs, logits, boxes)``.

    Args:
        model: an RA-CNN; the wrapper does not change its mode (call ``eval()`` first).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images)
        all_scales = RACNN.fusion_name(len(out.logits))
        probs = out.fused[all_scales].softmax(-1)  # (B, K)
        logits = torch.stack(out.logits)  # (S, B, K)
        boxes = torch.stack(out.boxes_in_image)  # (S-1, B, 3)
        return probs, logits, boxes


class _MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, for ONNX.

    The ONNX exporter handles adaptive pooling only when the output size divides the input size (an APN pooling
    a 6 x 6 map to 7 x 7 fails). The input's spatial size is fixed in an export, so the pooling is a constant
    averaging matrix per axis: ``P_h @ x @ P_w^T``, built from the traced shape.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def _matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
        matrix = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
        for i in range(n_out):  # PyTorch's bins: [floor(i n / m), ceil((i + 1) n / m))
            start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix

    def forward(self, x: Tensor) -> Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])  # constants in the trace: the input size is fixed
        out_h = self.output_size[0] or height
        out_w = self.output_size[1] or width
        rows = self._matrix(height, out_h, x)  # (out_h, H)
        cols = self._matrix(width, out_w, x)  # (out_w, W)
        return torch.matmul(torch.matmul(rows, x), cols.t())  # (B, C, out_h, out_w)


def _onnx_friendly(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.AdaptiveAvgPool2d`` replaced by :class:`_MatmulAdaptiveAvgPool2d`."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, child_name, _MatmulAdaptiveAvgPool2d(child.output_size))
    return model


def _example(model: nn.Module, input_size: int, batch_size: int, seed: int = 0) -> Tensor:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, input_size, input_size, generator=generator).to(device)  # normalised-like


def _eval_wrapper(model: nn.Module) -> ExportWrapper:
    if model.training:
        raise ValueError("export an eval-mode model: call model.eval() first (batch norm would use batch stats)")
    return ExportWrapper(model)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int,
    *,
    batch_size: int = 2,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis (TorchScript-based exporter, ``dynamo=False``).

    The default dynamo exporter needs the ``onnxscript`` package, which racnn does not depend on. Adaptive
    average pooling is exported as fixed matrix products (see :class:`_MatmulAdaptiveAvgPool2d`); the parity
    check (:func:`verify_onnx`) compares against the unmodified model.

    Args:
        model: an RA-CNN in eval mode.
        path: the ``.onnx`` file to write.
        input_size: side N of the ``(B, 3, N, N)`` input.
        batch_size: batch of the example traced (any batch runs afterwards).
        opset: ONNX opset version.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _eval_wrapper(_onnx_friendly(model))
    dynamic_axes = {INPUT_NAME: {0: "batch"}, "probs": {0: "batch"}, "logits": {1: "batch"}, "boxes": {1: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (_example(model, input_size, batch_size),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )
    return path


def export_torchscript(model: nn.Module, path: str | Path, input_size: int, *, batch_size: int = 2) -> Path:
    """Trace ``model`` with :func:`torch.jit.trace` and save it; the traced module takes any batch size.

    ``torch.jit.trace`` is deprecated in recent PyTorch (in favour of ``torch.export``) but still works; its
    deprecation warning is silenced here.

    Args:
        model: an RA-CNN in eval mode.
        path: the ``.pt`` file to write.
        input_size: side N of the ``(B, 3, N, N)`` input.
        batch_size: batch of the example traced.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _eval_wrapper(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
        traced = torch.jit.trace(wrapper, (_example(model, input_size, batch_size),), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def _max_diff(expected: Sequence[Tensor], got: Sequence[Any]) -> float:
    if len(expected) != len(got):
        raise ValueError(f"the export gives {len(got)} outputs, the model {len(expected)}")
    diffs = []
    for e, g in zip(expected, got, strict=True):
        g = torch.as_tensor(g).to(e.device, e.dtype)
        if g.shape != e.shape:
            raise ValueError(f"export output of shape {tuple(g.shape)}, model output of shape {tuple(e.shape)}")
        diffs.append(float((e - g).abs().max()) if e.numel() else 0.0)
    return max(diffs)


@torch.no_grad()
def verify_onnx(model: nn.Module, path: str | Path, input_size: int, *, batch_size: int = 3, seed: int = 1) -> float:
    """Run the ONNX file with onnxruntime (CPU) and the eager model on one random batch.

    Returns:
        The maximum absolute difference over all outputs.
    """
    import onnxruntime as ort

    images = _example(model, input_size, batch_size, seed)
    expected = _eval_wrapper(model)(images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.cpu().numpy()})
    return _max_diff([e.cpu() for e in expected], [torch.from_numpy(g) for g in got])


@torch.no_grad()
def verify_torchscript(
    model: nn.Module, path: str | Path, input_size: int, *, batch_size: int = 3, seed: int = 1
) -> float:
    """Load the TorchScript file with :func:`torch.jit.load` and compare it with the eager model on one batch.

    Returns:
        The maximum absolute difference over all outputs.
    """
    images = _example(model, input_size, batch_size, seed)
    expected = _eval_wrapper(model)(images)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
        loaded = torch.jit.load(str(path), map_location=images.device)
    return _max_diff(expected, loaded(images))


@torch.no_grad()
def precision_drift(
    model: nn.Module, input_size: int, precision: Precision, *, batch_size: int = 3, seed: int = 1
) -> float:
    """How far ``model`` run in ``precision`` (weights cast, as :class:`racnn.api.Predictor` runs it) lies from
    ``model`` in float32, which is what an export computes: the maximum absolute difference over all outputs."""
    images = _example(model, input_size, batch_size, seed)
    expected = _eval_wrapper(model)(images)
    reduced = prepare_for_inference(copy.deepcopy(model), images.device, precision)
    return _max_diff(expected, [g.float() for g in _eval_wrapper(reduced)(inference_input(images, precision))])


def write_sidecar(
    path: str | Path,
    *,
    format: str,
    class_names: Sequence[str],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_scales: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<path>.json`` (e.g. ``racnn.onnx.json``): what a consumer needs to feed and read the export."""
    num_classes = len(class_names)
    meta = {
        "format": format,
        "class_names": list(class_names),
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        "num_scales": num_scales,
        "fused_head": RACNN.fusion_name(num_scales),
        "input_name": INPUT_NAME,
        "input_shape": ["batch", 3, input_size, input_size],
        "output_names": list(OUTPUT_NAMES),
        "output_shapes": {
            "probs": ["batch", num_classes],
            "logits": [num_scales, "batch", num_classes],
            "boxes": [num_scales - 1, "batch", 3],
        },
        "preprocessing": "RGB in [0, 1], shorter side resized to round(input_size * resize_ratio), "
        "centre crop input_size, (x - mean) / std",
        **(extra or {}),
    }
    sidecar = Path(str(path) + ".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return sidecar


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="export format")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write (sidecar: PATH.json)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--batch", type=int, default=2, metavar="N", help="batch size of the traced example (default 2)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help=f"parity check's max abs difference (default {TOLERANCE})"
    )
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default="auto",
        help="the precision racnn predict would use (auto: bf16 on a CPU with oneDNN bf16 kernels, else fp32); when "
        "it is not fp32, also print how far the model in it lies from the float32 export (default auto)",
    )  # fmt: skip


def _max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes (20 in torch 2.14)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET))


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before the model is loaded, what would fail after a slow export or replace a file it should not."""
    if args.batch < 1 or args.batch > 1024:
        raise ConfigError(f"--batch must be between 1 and 1024, got {args.batch}")
    if args.tolerance != args.tolerance:  # NaN: every comparison would fail
        raise ConfigError("--tolerance must be a number, got nan")
    if args.format == "onnx" and not MIN_OPSET <= args.opset <= _max_opset():
        raise ConfigError(
            f"--opset {args.opset}: the attention crop's grid_sample needs opset {MIN_OPSET} or newer, and this torch "
            f"exports up to {_max_opset()}; use --opset {DEFAULT_OPSET}"
        )
    check_out(Path(args.out), Path(args.checkpoint), args.format)


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # the mode a plain open() gives, not mkstemp's private 0600
        os.replace(name, out)
    finally:
        Path(name).unlink(missing_ok=True)


def main(args: argparse.Namespace) -> int:
    from racnn.api import model_normalization
    from racnn.checkpoint import load_model

    try:
        check_arguments(args)
        precision = choose_precision(args.amp, torch.device("cpu"))  # the check runs on the CPU
        model, cfg, class_names = load_model(args.checkpoint, map_location="cpu")  # exports are device-neutral
    except (CheckpointError, ConfigError) as e:
        return fail("", e)
    try:
        code = _export(args, model, cfg, class_names, model_normalization(model))
    except OSError as e:  # the export could not be written (no permission, disk full); an earlier one is kept
        if isinstance(e, BrokenPipeError):
            raise
        return fail("", describe_os_error(e, target=args.out), code=1)
    if precision.amp != "none" and code != 2:
        drift = precision_drift(model, cfg.model.input_size, precision, batch_size=args.batch + 1)
        print(f"{precision.describe()}: racnn predict here differs from the export by up to {drift:.3g} (information)")
    return code


def _export(args: argparse.Namespace, model: nn.Module, cfg, class_names: list[str], normalization) -> int:
    size = cfg.model.input_size
    out = Path(args.out)
    if args.format == "onnx":
        try:
            import onnxruntime  # noqa: F401  (checked before the slow export)
        except ImportError:
            print(
                "error: ONNX export needs onnxruntime to check the result: pip install racnn[export]", file=sys.stderr
            )
            return 2
        _export_beside(out, lambda tmp: export_onnx(model, tmp, size, batch_size=args.batch, opset=args.opset))
        diff = verify_onnx(model, out, size, batch_size=args.batch + 1)
        extra = {"opset": args.opset}
    else:
        _export_beside(out, lambda tmp: export_torchscript(model, tmp, size, batch_size=args.batch))
        diff = verify_torchscript(model, out, size, batch_size=args.batch + 1)
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
        extra={**extra, "resize_ratio": cfg.data.resize_ratio, "backbone": cfg.model.backbone},
    )
    ok = diff <= args.tolerance
    print(printable(f"wrote {out} and {sidecar}"))
    print(
        f"parity with PyTorch (batch {args.batch + 1}, traced with {args.batch}): max abs difference {diff:.3g} "
        f"({'ok' if ok else 'FAILED'}, tolerance {args.tolerance:g})"
    )
    return 0 if ok else 1
