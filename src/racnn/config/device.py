"""The one place a device is chosen (``--device``, ``train.device``): ``auto`` takes CUDA, then MPS, then the CPU.

May import: torch (inside the functions: the config stays torch-free to import), racnn.config.schema.
"""

from __future__ import annotations

from racnn.config.schema import ConfigError

__all__ = ["check_device", "resolve_device"]


def check_device(name: str) -> None:
    """Refuse a device name torch cannot parse (``train.device``), without looking for the device itself."""
    if name == "auto":
        return
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None


def resolve_device(name: str = "auto"):
    """The one place a device is chosen: ``auto`` takes CUDA, then MPS, then the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use device=cpu or auto")
    return device
