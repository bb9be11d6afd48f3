"""Export a model to ONNX or TorchScript, and check an export against the PyTorch model (``racnn export`` is
:mod:`racnn.cli.export`).

The exported graph takes one input (two for a model with a source view) and gives three outputs (B is dynamic,
S scales, K classes):

  images  (B, 3, N, N)  float32, normalised with the backbone's mean/std (N = model.input_size)
  source  (B, 3, M, M)  only for a model trained with data.source_size = M: the same centre crop at M px, which
                        the zooms are sampled from
  probs   (B, K)        softmax of the all-scale fusion head: the overall prediction
  logits  (S, B, K)     each scale's own classifier logits, scale 1 first
  boxes   (S-1, B, 3)   attention boxes (tx, ty, tl) of scales 2..S in the input's normalised coordinates;
                        (S-1, B, R, 3) for a model with R > 1 regions per scale (model.regions)

A JSON sidecar <out>.json (:func:`write_sidecar`) holds the class names, the preprocessing stated exactly
(:func:`racnn.inference.preprocessing.preprocessing_spec`), mean/std and the output names. :func:`verify_onnx` /
:func:`verify_torchscript` run the export on a random batch and compare it with the PyTorch model output by output
(:func:`racnn.inference.parity.compare_outputs`), with the model's own float32 error (against the same model in
float64) as part of the tolerance.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from racnn.inference.parity import ATOL, RTOL, OutputParity, Parity, compare_outputs
from racnn.inference.preprocessing import preprocessing_spec
from racnn.modeling.crop import adaptive_avg_pool_matmul
from racnn.modeling.model import RACNN
from racnn.precision import Precision, inference_input, prepare_for_inference

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "SOURCE_NAME",
    "ExportWrapper",
    "OutputParity",
    "Parity",
    "compare_outputs",
    "export_onnx",
    "export_torchscript",
    "verify_onnx",
    "verify_torchscript",
    "write_sidecar",
]

INPUT_NAME = "images"
SOURCE_NAME = "source"  # the second input of a model trained with data.source_size
OUTPUT_NAMES = ("probs", "logits", "boxes")
# The attention crop's grid sampling (GridSample) needs opset 16; 20 also has AffineGrid. Checked with torch 2.14's
# TorchScript-based exporter and onnxruntime 1.32.
DEFAULT_OPSET = 20  # racnn export's --opset help says it too


class ExportWrapper(nn.Module):
    """The model with plain tensor outputs, for tracing: ``images[, source] -> (probs, logits, boxes)``.

    Args:
        model: an RA-CNN; the wrapper does not change its mode (call ``eval()`` first).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, source: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images) if source is None else self.model(images, source)
        all_scales = RACNN.fusion_name(len(out.logits))
        probs = out.fused[all_scales].softmax(-1)  # (B, K)
        logits = torch.stack(out.logits)  # (S, B, K)
        boxes = torch.stack(out.boxes_in_image)  # (S-1, B, 3), or (S-1, B, R, 3) with R regions
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

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool_matmul(x, self.output_size)  # constants in the trace: the input size is fixed


def _onnx_friendly(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.AdaptiveAvgPool2d`` replaced by :class:`_MatmulAdaptiveAvgPool2d`."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, child_name, _MatmulAdaptiveAvgPool2d(child.output_size))
    return model


def _example(model: nn.Module, input_size: int, batch_size: int, seed: int = 0, source_size: int = 0) -> list[Tensor]:
    """Normalised-like random inputs: ``[images]``, or ``[images, source]`` with a source view of ``source_size``."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    sides = _input_sides(input_size, source_size).values()
    return [torch.randn(batch_size, 3, side, side, generator=generator).to(device) for side in sides]


def _input_sides(input_size: int, source_size: int) -> dict[str, int]:
    """The graph's inputs, name -> side: ``images``, and ``source`` for a model with a source view."""
    return {INPUT_NAME: input_size, **({SOURCE_NAME: source_size} if source_size else {})}


def _float64_outputs(model: nn.Module, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``model``'s outputs in float64 on the CPU (a copy; the model is left as it is): the exact result the parity
    check measures float32's own error against."""
    exact = _eval_wrapper(copy.deepcopy(model).to("cpu", torch.float64))
    return [out.float() for out in exact(*(x.to("cpu", torch.float64) for x in inputs))]


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
    source_size: int = 0,
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
        source_size: ``data.source_size`` of a model trained with a source view: the graph takes a second input,
            ``source`` ``(B, 3, M, M)``; 0 for none.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _eval_wrapper(_onnx_friendly(model))
    inputs = list(_input_sides(input_size, source_size))
    dynamic_axes = {**{name: {0: "batch"} for name in inputs}, "probs": {0: "batch"}, "logits": {1: "batch"}}
    dynamic_axes["boxes"] = {1: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            tuple(_example(model, input_size, batch_size, source_size=source_size)),
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )
    return path


def export_torchscript(
    model: nn.Module, path: str | Path, input_size: int, *, batch_size: int = 2, source_size: int = 0
) -> Path:
    """Trace ``model`` with :func:`torch.jit.trace` and save it; the traced module takes any batch size.

    ``torch.jit.trace`` is deprecated in recent PyTorch (in favour of ``torch.export``) but still works; its
    deprecation warning is silenced here.

    Args:
        model: an RA-CNN in eval mode.
        path: the ``.pt`` file to write.
        input_size: side N of the ``(B, 3, N, N)`` input.
        batch_size: batch of the example traced.
        source_size: as for :func:`export_onnx`: the traced module then takes ``(images, source)``.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _eval_wrapper(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
        example = tuple(_example(model, input_size, batch_size, source_size=source_size))
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int,
    *,
    batch_size: int = 3,
    seed: int = 1,
    rtol: float = RTOL,
    atol: float = ATOL,
    source_size: int = 0,
) -> Parity:
    """Run the ONNX file with onnxruntime (CPU) and the eager model on one random batch; compare every output
    (:func:`racnn.inference.parity.compare_outputs`, with the model in float64 as the exact result).

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime as ort

    inputs = _example(model, input_size, batch_size, seed, source_size)
    expected = _eval_wrapper(model)(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = _input_sides(input_size, source_size)
    feed = {name: x.cpu().numpy() for name, x in zip(names, inputs, strict=True)}
    got = [torch.from_numpy(g) for g in session.run(list(OUTPUT_NAMES), feed)]
    exact = _float64_outputs(model, inputs)
    return compare_outputs([e.cpu() for e in expected], got, rtol=rtol, atol=atol, exact=exact)


@torch.no_grad()
def verify_torchscript(
    model: nn.Module,
    path: str | Path,
    input_size: int,
    *,
    batch_size: int = 3,
    seed: int = 1,
    rtol: float = RTOL,
    atol: float = ATOL,
    source_size: int = 0,
) -> Parity:
    """Load the TorchScript file with :func:`torch.jit.load` and compare every output with the eager model's (with
    the model in float64 as the exact result, as :func:`verify_onnx`)."""
    inputs = _example(model, input_size, batch_size, seed, source_size)
    expected = _eval_wrapper(model)(*inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
        loaded = torch.jit.load(str(path), map_location=inputs[0].device)
    exact = [x.to(inputs[0].device) for x in _float64_outputs(model, inputs)]
    return compare_outputs(expected, loaded(*inputs), rtol=rtol, atol=atol, exact=exact)


@torch.no_grad()
def precision_drift(
    model: nn.Module,
    input_size: int,
    precision: Precision,
    *,
    batch_size: int = 3,
    seed: int = 1,
    source_size: int = 0,
) -> Parity:
    """How far ``model`` run in ``precision`` (weights cast, as :class:`racnn.inference.api.Predictor` runs it) lies
    from ``model`` in float32, which is what an export computes, output by output (``probs``, each scale's
    ``logits``, each zoomed scale's ``boxes``), on one random batch; :attr:`Parity.worst` names the output that
    moves most for its scale."""
    inputs = _example(model, input_size, batch_size, seed, source_size)
    expected = _eval_wrapper(model)(*inputs)
    reduced = prepare_for_inference(copy.deepcopy(model), inputs[0].device, precision)
    got = [g.float() for g in _eval_wrapper(reduced)(*(inference_input(x, precision) for x in inputs))]
    return compare_outputs(expected, got)


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
    regions: int = 1,
    source_size: int = 0,
    resize_ratio: float = 512 / 448,
) -> Path:
    """Write ``<path>.json`` (e.g. ``racnn.onnx.json``): what a consumer needs to feed and read the export.

    ``"preprocessing"`` is :func:`racnn.inference.preprocessing.preprocessing_spec` of the model (``resize_ratio``
    is ``data.resize_ratio``): every step from the decoded photo to the inputs, with the resize's filter and
    antialiasing, the rounding of sizes and of the crop's corner, mean/std and the channel order.

    ``regions`` (``model.regions``) is written as ``"regions"``; with R > 1 the boxes' shape has its region axis.
    ``source_size`` (``data.source_size``, 0 for none) is written as ``"source_size"``; with M > 0 the export
    takes a second input, ``"source"``, listed in ``"input_names"`` and ``"input_shapes"``, and the preprocessing
    says how both views are made.
    """
    num_classes = len(class_names)
    sides = _input_sides(input_size, source_size)
    meta = {
        "format": format,
        "class_names": list(class_names),
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        "num_scales": num_scales,
        "regions": regions,
        "fused_head": RACNN.fusion_name(num_scales),
        "input_name": INPUT_NAME,
        "input_shape": ["batch", 3, input_size, input_size],
        "output_names": list(OUTPUT_NAMES),
        "output_shapes": {
            "probs": ["batch", num_classes],
            "logits": [num_scales, "batch", num_classes],
            "boxes": [num_scales - 1, "batch", 3] if regions == 1 else [num_scales - 1, "batch", regions, 3],
        },
        "preprocessing": preprocessing_spec(input_size, resize_ratio, mean, std, source_size),
        "resize_ratio": resize_ratio,
        "source_size": source_size,
        "input_names": list(sides),
        "input_shapes": {name: ["batch", 3, side, side] for name, side in sides.items()},
        **(extra or {}),
    }
    sidecar = Path(str(path) + ".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return sidecar
