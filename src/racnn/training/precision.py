"""Mixed precision: the autocast context for ``train.amp`` and the warning for bf16 where it is slow.

May import: torch, ``racnn.config``.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from racnn.config import ConfigError


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in ``none | bf16 | fp16`` (fp16 needs CUDA: it needs a gradient scaler)."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (got {device.type}); use train.amp=bf16 instead")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def warn_slow_bf16(device: torch.device, amp: str) -> None:
    """bf16 on a CPU without oneDNN bf16 kernels (no AVX-512 BF16 / AMX) runs convolutions on a slow fallback."""
    if amp == "bf16" and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(
            "train.amp=bf16 on a CPU without oneDNN bf16 support: convolutions fall back to a slow path (10-20x "
            "slower than float32 measured on an AVX2-only CPU); use train.amp=none here",
            stacklevel=3,
        )
