"""The precision rule: which number format and memory layout a run uses on a device, decided in one place.

``amp="auto"`` (the default of ``train.amp`` and of every command's ``--amp``) takes bf16 where the device has fast
bf16 kernels (a CUDA GPU that supports bf16; a CPU with oneDNN bf16 kernels, i.e. AVX-512 BF16 or AMX) and float32
everywhere else (other CPUs, where bf16 convolutions fall back to a 10-20x slower path, and MPS). ``none``, ``bf16``
and ``fp16`` are taken as asked. Channels-last is used on CPUs and CUDA GPUs, whose convolution libraries (oneDNN,
cuDNN) have their fastest kernels for it. Training runs under ``torch.autocast``; inference on a reduced precision
casts the weights once (:func:`prepare_for_inference`), which on a CPU is several times faster than autocast,
whose per-call weight casts dominate a forward pass.

Training's autocast context for ``train.amp`` (:func:`autocast`) lives here too: one module for the rule and
both its uses.

May import: torch, ``racnn.config``.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from racnn.config.schema import ConfigError

__all__ = [
    "AMP_CHOICES",
    "Precision",
    "autocast",
    "channels_last_helps",
    "choose_precision",
    "fast_bf16",
    "inference_input",
    "prepare_for_inference",
    "resolve_amp",
    "warn_slow_bf16",
]

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` has fast bf16 kernels: a CUDA GPU that supports bf16, a CPU with oneDNN bf16 kernels."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False  # mps and others: float32


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto | none | bf16 | fp16`` -> ``bf16 | fp16 | none`` on ``device`` (``auto``: bf16 where it is fast)."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}, got '{amp}'")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp fp16 needs a CUDA device (got {device.type}); use bf16 or none instead")
    if amp != "auto":
        return amp
    return "bf16" if fast_bf16(device) else "none"


def channels_last_helps(device: torch.device) -> bool:
    """Channels-last is the fast layout of oneDNN (CPU) and cuDNN (CUDA) convolutions; elsewhere keep the default."""
    return device.type in ("cpu", "cuda")


@dataclass(frozen=True)
class Precision:
    """What a run uses: ``amp`` (``bf16 | fp16 | none``), channels-last or not, and why, for the log line."""

    amp: str
    channels_last: bool
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.amp]

    def describe(self) -> str:
        """E.g. ``precision: bf16 (auto: this CPU has oneDNN bf16 kernels), channels-last``."""
        name = "fp32" if self.amp == "none" else self.amp
        return f"precision: {name} ({self.reason})" + (", channels-last" if self.channels_last else "")


def choose_precision(amp: str, device: torch.device, channels_last: bool = True) -> Precision:
    """The :class:`Precision` of ``amp`` on ``device``; ``channels_last=False`` turns the layout off anywhere."""
    resolved = resolve_amp(amp, device)
    layout = channels_last and channels_last_helps(device)
    if amp != "auto":
        return Precision(resolved, layout, f"amp {amp} as asked")
    if device.type == "cpu":
        has = "has" if resolved == "bf16" else "has no"
        return Precision(resolved, layout, f"auto: this CPU {has} oneDNN bf16 kernels")
    if device.type == "cuda":
        return Precision(resolved, layout, f"auto: this GPU {'supports' if resolved == 'bf16' else 'lacks'} bf16")
    return Precision(resolved, layout, f"auto: float32 on {device.type}")


def warn_slow_bf16(device: torch.device, amp: str) -> None:
    """bf16 on a CPU without oneDNN bf16 kernels (no AVX-512 BF16 / AMX) runs convolutions on a slow fallback."""
    if amp == "bf16" and device.type == "cpu" and not fast_bf16(device):
        warnings.warn(
            "amp bf16 on a CPU without oneDNN bf16 support: convolutions fall back to a slow path (10-20x "
            "slower than float32 measured on an AVX2-only CPU); use amp none (or auto) here",
            stacklevel=3,
        )


def prepare_for_inference(model: nn.Module, device: torch.device, precision: Precision) -> nn.Module:
    """Move ``model`` to ``device`` in eval mode, in ``precision``'s layout, with its weights cast to its dtype once
    (inputs then go through :func:`inference_input`). Returns the same module."""
    warn_slow_bf16(device, precision.amp)
    model.to(device=device, dtype=precision.dtype).eval()
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def inference_input(images: Tensor, precision: Precision) -> Tensor:
    """A ``(B, 3, H, W)`` batch in the dtype and layout :func:`prepare_for_inference` gave the model."""
    images = images.to(precision.dtype)
    return images.contiguous(memory_format=torch.channels_last) if precision.channels_last else images


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in ``auto | none | bf16 | fp16`` (fp16 needs CUDA: it needs a gradient
    scaler; ``auto`` is resolved by :func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
