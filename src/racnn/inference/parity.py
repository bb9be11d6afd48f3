"""The parity check of an export: its outputs against the eager model's, output by output, within tolerances.

An export (ONNX, TorchScript) gives ``(probs, logits, boxes)`` (see :mod:`racnn.inference.export`); the check splits
them into named outputs (``probs``, ``logits[scale s]``, ``boxes[scale s]``) and compares each, so a failure says
which output is off, by how much, and against which tolerance.

The rule, per element: ``|export - torch| <= atol + rtol * |torch| + NOISE_FACTOR * noise``, where ``noise`` is how
far PyTorch's own float32 output lies from the same model run in float64 (the largest difference over that output,
measured on the same batch). Why the noise term: the zoomed scales are not as well conditioned as a plain CNN. A
crop's sample positions are float32 pixel coordinates (rounding step 1.5e-5 px at 224 px) that ``grid_sample`` and
ONNX Runtime's GridSample round differently; the crops then differ by the image's gradient times that (1e-5 to
5e-5 measured, where a convolution's reordered sums differ by 1e-7), the zoomed CNN amplifies it, and scale 3 reads
scale 2's box through the same noise. With a trained APN and logits of order 10-50 that reached 8.1e-4 on scale
3's logits, a relative error no fixed ``rtol`` separates from a wrong op. Measuring the float32 model's own error
against float64 gives the scale of what float32 can promise for *this* model and batch: if the export is at most
``NOISE_FACTOR - 1 = 3`` times as far from the exact result as PyTorch's float32 is, the triangle inequality
bounds their difference by ``NOISE_FACTOR * noise``. A wrong op (an error of a percent, a swapped axis) stays far
outside it.

May import: torch; nothing of racnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ATOL", "NOISE_FACTOR", "RTOL", "OutputParity", "Parity", "compare_outputs"]

# Parity tolerances, per element: |export - torch| <= ATOL + RTOL * |torch|. A correct fp32 export is not bit-exact:
# ONNX Runtime's kernels (MLAS convolutions and GEMMs, fused ops) sum in another order than PyTorch's, and each
# reordered fp32 sum of n products is off by up to ~n * 2^-24 of its terms' magnitude. Through a few conv layers
# that gives relative errors around 1e-4 on the logits (seen: 5.1e-4 absolute on logits up to 6.6 from a freshly
# trained tiny model), so a fixed 1e-4 absolute bound fails correct exports whose logits are ~10. RTOL = 1e-3
# leaves ~10x headroom over that and still catches a wrong op (errors of a percent or more); ATOL = 1e-4 covers
# values near zero (small probabilities, box coordinates in [0, 1]) where a relative bound says nothing.
RTOL = 1e-3
ATOL = 1e-4
NOISE_FACTOR = 4.0  # see the module docstring: the export may round up to 3x as far from float64 as torch does


@dataclass(frozen=True)
class OutputParity:
    """How one output of an export compares with the eager model's.

    Attributes:
        name: ``"probs"``, ``"logits[scale 2]"``, ``"boxes[scale 3]"``, ...
        max_abs: the largest ``|export - torch|``.
        max_rel: the largest ``|export - torch| / |torch|`` over the elements where torch's value is not 0.
        ok: every element within ``atol + rtol * |torch| + NOISE_FACTOR * noise``.
        noise: how far PyTorch's float32 output lies from float64 (largest difference); 0 when not measured.
        scale: the largest ``|torch|`` of the output (what its errors compare with).
    """

    name: str
    max_abs: float
    max_rel: float
    ok: bool
    noise: float = 0.0
    scale: float = 0.0

    def describe(self) -> str:
        """E.g. ``logits[scale 3]: max abs error 0.00081, max rel error 0.0021 (values up to 12.3; PyTorch's float32
        lies 0.0004 from float64)``."""
        noise = f"; PyTorch's float32 lies {self.noise:.2g} from float64" if self.noise else ""
        errors = f"max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g}"
        return f"{self.name}: {errors} (values up to {self.scale:.3g}{noise})"


@dataclass(frozen=True)
class Parity:
    """The parity check of an export: one :class:`OutputParity` per output, and the tolerances used."""

    outputs: list[OutputParity]
    rtol: float
    atol: float
    noise_factor: float = NOISE_FACTOR

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def worst(self) -> OutputParity | None:
        """The output with the largest error relative to its values' scale (the one to look at first)."""
        return max(self.outputs, key=lambda o: o.max_abs / max(o.scale, self.atol), default=None)

    def rule(self) -> str:
        """The tolerance, in words."""
        noise = f" + {self.noise_factor:g} * noise" if any(o.noise for o in self.outputs) else ""
        return f"|export - torch| <= {self.atol:g} + {self.rtol:g} * |torch|{noise}"

    def failures(self) -> list[str]:
        """One line per output outside the tolerance, naming it, its errors and the tolerance."""
        return [f"{o.describe()}, above the tolerance {self.rule()}" for o in self.outputs if not o.ok]


def _named_outputs(outputs: Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    """``(probs, logits, boxes)`` split into the named outputs the check compares: scale by scale."""
    probs, logits, boxes = outputs
    named = [("probs", probs)]
    named += [(f"logits[scale {s + 1}]", z) for s, z in enumerate(logits)]
    named += [(f"boxes[scale {s + 2}]", b) for s, b in enumerate(boxes)]  # (B, 3), or (B, R, 3) with R regions
    return named


def compare_outputs(
    expected: Sequence[Tensor],
    got: Sequence[Any],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    exact: Sequence[Tensor] | None = None,
    noise_factor: float = NOISE_FACTOR,
) -> Parity:
    """Compare an export's ``(probs, logits, boxes)`` with the eager model's, output by output.

    Args:
        expected: the eager model's outputs (:class:`ExportWrapper`'s).
        got: the export's, as tensors or arrays of the same shapes.
        rtol: relative tolerance.
        atol: absolute tolerance; an element passes when ``|got - expected| <= atol + rtol * |expected|`` (plus the
            noise term below).
        exact: the same model's outputs in float64 on the same inputs, or None; then each output's ``noise``
            (``max |expected - exact|``, float32's own error) widens its tolerance by ``noise_factor * noise``.
        noise_factor: see the module docstring.

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
    named_exact = _named_outputs([x.to(e.device) for x, e in zip(exact, expected, strict=True)]) if exact else None
    results = []
    for i, ((name, e), (_, g)) in enumerate(zip(_named_outputs(expected), _named_outputs(cast), strict=True)):
        e, g = e.double(), g.double()
        error = (g - e).abs()
        nonzero = e != 0
        noise = float((e - named_exact[i][1].double()).abs().max()) if named_exact and e.numel() else 0.0
        results.append(
            OutputParity(
                name=name,
                max_abs=float(error.max()) if error.numel() else 0.0,
                max_rel=float((error[nonzero] / e[nonzero].abs()).max()) if nonzero.any() else 0.0,
                ok=bool((error <= atol + rtol * e.abs() + noise_factor * noise).all()),  # NaN anywhere fails
                noise=noise,
                scale=float(e.abs().max()) if e.numel() else 0.0,
            )
        )
    return Parity(results, rtol, atol, noise_factor)
