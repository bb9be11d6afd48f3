"""The parity check of an export: its outputs against the eager model's, output by output, within tolerances.

An export (ONNX, TorchScript) gives ``(probs, logits, boxes)`` (see :mod:`racnn.inference.export`); the check splits
them into named outputs (``probs``, ``logits[scale s]``, ``boxes[scale s]``) and applies ``torch.allclose``'s rule to
each, so a failure says which output is off, by how much, and against which tolerance.

May import: torch; nothing of racnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ATOL", "RTOL", "OutputParity", "Parity", "compare_outputs"]

# Parity tolerances, per element: |export - torch| <= ATOL + RTOL * |torch|. A correct fp32 export is not bit-exact:
# ONNX Runtime's kernels (MLAS convolutions and GEMMs, fused ops) sum in another order than PyTorch's, and each
# reordered fp32 sum of n products is off by up to ~n * 2^-24 of its terms' magnitude. Through a few conv layers
# that gives relative errors around 1e-4 on the logits (seen: 5.1e-4 absolute on logits up to 6.6 from a freshly
# trained tiny model), so a fixed 1e-4 absolute bound fails correct exports whose logits are ~10. RTOL = 1e-3
# leaves ~10x headroom over that and still catches a wrong op (errors of a percent or more); ATOL = 1e-4 covers
# values near zero (small probabilities, box coordinates in [0, 1]) where a relative bound says nothing.
RTOL = 1e-3
ATOL = 1e-4


@dataclass(frozen=True)
class OutputParity:
    """How one output of an export compares with the eager model's.

    Attributes:
        name: ``"probs"``, ``"logits[scale 2]"``, ``"boxes[scale 3]"``, ...
        max_abs: the largest ``|export - torch|``.
        max_rel: the largest ``|export - torch| / |torch|`` over the elements where torch's value is not 0.
        ok: every element within ``atol + rtol * |torch|``.
    """

    name: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class Parity:
    """The parity check of an export: one :class:`OutputParity` per output, and the tolerances used."""

    outputs: list[OutputParity]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def failures(self) -> list[str]:
        """One line per output outside the tolerance, naming it, its errors and the tolerance."""
        return [
            f"{o.name}: max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}, above the tolerance "
            f"|export - torch| <= {self.atol:g} + {self.rtol:g} * |torch|"
            for o in self.outputs
            if not o.ok
        ]


def _named_outputs(outputs: Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    """``(probs, logits, boxes)`` split into the named outputs the check compares: scale by scale."""
    probs, logits, boxes = outputs
    named = [("probs", probs)]
    named += [(f"logits[scale {s + 1}]", z) for s, z in enumerate(logits)]
    named += [(f"boxes[scale {s + 2}]", b) for s, b in enumerate(boxes)]  # (B, 3), or (B, R, 3) with R regions
    return named


def compare_outputs(
    expected: Sequence[Tensor], got: Sequence[Any], *, rtol: float = RTOL, atol: float = ATOL
) -> Parity:
    """Compare an export's ``(probs, logits, boxes)`` with the eager model's, output by output.

    Args:
        expected: the eager model's outputs (:class:`ExportWrapper`'s).
        got: the export's, as tensors or arrays of the same shapes.
        rtol: relative tolerance.
        atol: absolute tolerance; an element passes when ``|got - expected| <= atol + rtol * |expected|``.

    Raises:
        ValueError: a different number of outputs, or an output of another shape.
    """
    if len(expected) != len(got):
        raise ValueError(f"the export gives {len(got)} outputs, the model {len(expected)}")
    cast = []
    for name, e, g in zip(("probs", "logits", "boxes"), expected, got, strict=True):
        g = torch.as_tensor(g).to(e.device, e.dtype)
        if g.shape != e.shape:
            raise ValueError(f"export output {name} of shape {tuple(g.shape)}, model output of shape {tuple(e.shape)}")
        cast.append(g)
    results = []
    for (name, e), (_, g) in zip(_named_outputs(expected), _named_outputs(cast), strict=True):
        e, g = e.double(), g.double()
        error = (g - e).abs()
        nonzero = e != 0
        results.append(
            OutputParity(
                name=name,
                max_abs=float(error.max()) if error.numel() else 0.0,
                max_rel=float((error[nonzero] / e[nonzero].abs()).max()) if nonzero.any() else 0.0,
                ok=bool((error <= atol + rtol * e.abs()).all()),  # NaN anywhere fails
            )
        )
    return Parity(results, rtol, atol)
