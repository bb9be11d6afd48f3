"""Mixed precision in training: the autocast context for ``train.amp``.

The rule that turns ``auto`` into bf16 or float32 on a device lives in :mod:`racnn.precision`.

May import: torch, ``racnn.config``, ``racnn.precision``.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from racnn.precision import resolve_amp, warn_slow_bf16

__all__ = ["autocast", "warn_slow_bf16"]


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in ``auto | none | bf16 | fp16`` (fp16 needs CUDA: it needs a gradient
    scaler; ``auto`` is resolved by :func:`racnn.precision.resolve_amp`)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
