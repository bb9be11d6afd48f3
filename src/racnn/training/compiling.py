"""``torch.compile`` with a fallback to eager execution where compiling fails on this platform.

May import: torch.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class CompiledOrEager:
    """``torch.compile(net)``; when compiling fails on this platform, warns once and runs ``net`` eagerly."""

    def __init__(self, net: nn.Module) -> None:
        self.eager, self.compiled = net, None
        try:
            self.compiled = torch.compile(net)
        except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
            warnings.warn(f"torch.compile unavailable here, running eagerly: {e}", stacklevel=2)

    def __getattr__(self, name: str):
        return getattr(self.eager, name)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                warnings.warn(f"torch.compile failed here, running eagerly: {str(e)[:500]}", stacklevel=2)
                self.compiled = None
        return self.eager(*args, **kwargs)
