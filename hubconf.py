"""PyTorch Hub entry points for racnn.

Weights are never downloaded: the entry point loads a LOCAL racnn checkpoint (with ``weights_only=True``). The
``racnn`` package must be installed (``pip install -e .`` in this repository, or ``pip install racnn``)::

    predictor = torch.hub.load("path/to/racnn", "racnn", source="local", checkpoint="runs/cub")
    predictor.predict("bird.jpg")[0].top

``predictor.model`` is the ``torch.nn.Module`` itself.
"""

dependencies = ["torch", "torchvision", "timm"]

from racnn.inference.api import Predictor  # noqa: E402  (hub reads ``dependencies`` first)
from racnn.inference.api import load as _load  # noqa: E402


def racnn(checkpoint: str, device: str = "cpu") -> Predictor:
    """An RA-CNN :class:`racnn.inference.api.Predictor` from a local checkpoint.

    Args:
        checkpoint: path to a racnn checkpoint file.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``.

    Returns:
        The predictor: ``.predict(images, topk=5)``, ``.model`` (eval mode), ``.config``, ``.class_names``,
        ``.transform``.
    """
    return _load(checkpoint, device=device)
