"""The answers an RA-CNN gives, and which of them have been trained.

A model of S scales has these heads: ``s1..sS`` (each scale's classifier), the fusion heads ``1+2``, ``1+2+3``...
(``fused`` names the one over all scales) and ``avg`` (the mean of the scales' probabilities, no parameters).
A head that no phase has trained yet (the fusion heads before the fusion phase, the scales before any
classification phase) answers at random: it is never chosen as the answer. :func:`answer_head` says what is used
instead, and every part of the product (best.pt selection, ``eval``, ``predict``, the API, the pictures) asks it.

May import: torch; nothing of racnn (the core's lowest layer).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "answer_head",
    "fusion_name",
    "head_logits",
    "head_names",
    "heads_trained_by",
    "is_trained",
    "model_answer",
    "scale_heads",
]


def fusion_name(n: int) -> str:
    """``"1+2+...+n"``, the key of the fusion head over the first ``n`` scales."""
    return "+".join(str(s) for s in range(1, n + 1))


def scale_heads(num_scales: int) -> list[str]:
    return [f"s{s + 1}" for s in range(num_scales)]


def head_names(num_scales: int) -> list[str]:
    """Every head: ``s1..sS``, ``1+2``, ``1+2+3``..., ``fused`` (the all-scale fusion) and ``avg``."""
    return scale_heads(num_scales) + [fusion_name(n) for n in range(2, num_scales + 1)] + ["fused", "avg"]


def heads_trained_by(kind: str, num_scales: int) -> list[str]:
    """The heads a phase of ``kind`` trains: the scales and their mean (warm-up, cls) or the fusions (fusion)."""
    if kind in ("warmup", "cls"):
        return [*scale_heads(num_scales), "avg"]
    if kind == "fusion":
        return [fusion_name(n) for n in range(2, num_scales + 1)] + ["fused"]
    return []


def is_trained(head: str, trained: Iterable[str] | None) -> bool:
    """Whether ``head`` has been trained; ``trained`` None (a checkpoint from before racnn recorded it) means all."""
    return trained is None or head in trained


def answer_head(requested: str, trained: Iterable[str] | None, num_scales: int) -> str:
    """``requested`` if it has been trained, else the mean of the scales (``avg``) if they are, else ``requested``.

    Args:
        requested: a head of :func:`head_names` (``fused`` for the model's answer).
        trained: the heads trained so far; None means unknown (a checkpoint from before racnn recorded it), taken
            as all of them.
        num_scales: S.
    """
    if trained is None:
        return requested
    trained = set(trained)
    if requested in trained or "avg" not in trained:
        return requested
    return "avg" if requested in head_names(num_scales) else requested


def head_logits(out: Any) -> dict[str, Tensor]:
    """Every head of a forward pass (:class:`racnn.modeling.model.RACNNOutput`) as float32 log-probabilities or logits:
    ``s1..sS``, the fusion heads, ``fused`` and ``avg`` (log of the mean of the scales' probabilities)."""
    heads = {f"s{s + 1}": z.float() for s, z in enumerate(out.logits)}
    heads.update({key: z.float() for key, z in out.fused.items()})
    heads["fused"] = out.fused[fusion_name(len(out.logits))].float()
    heads["avg"] = torch.stack([z.float().softmax(-1) for z in out.logits]).mean(0).log()
    return heads


def model_answer(model: Any, source: str = "this model") -> str:
    """The head that gives ``model``'s overall answer: ``fused``, or ``avg`` when the fusion heads were never
    trained (``model.trained_heads``, None when unknown); says so once, naming ``source``."""
    trained = getattr(model, "trained_heads", None)
    head = answer_head("fused", trained, model.num_scales)
    if head != "fused":
        warnings.warn(
            f"the fusion heads of {source} were never trained (train.fusion.epochs=0?): its answer is the mean of "
            "the scales' probabilities ('avg') instead",
            stacklevel=3,
        )
    return head
