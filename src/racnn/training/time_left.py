"""The run's time left: every phase at its own pace, the validation passes to come and the final test pass.

Owns: :class:`TimeLeft` (the seconds measured so far: per optimiser step of each phase kind, per evaluated image
and per evaluation pass) and its estimate of the rest of a run, :class:`TimedPass` (when a loader's first batch
arrived: its start-up) and :func:`validates` (which epochs are validated: the rule the run follows, so that the
estimate counts the same passes).

The phases do not cost the same per step: warm-up and classification train every backbone, the APN phase runs
every backbone and back-propagates through the zoomed ones, APN pre-training and fusion train small heads on
frozen backbones. A kind not yet seen is estimated from the kinds seen, scaled by :data:`RELATIVE_COST`; an
evaluation not yet seen from the training pace (:data:`EVAL_COST`: a forward pass, no backward). An evaluation pass
pays its loader's start-up (workers, the first batch) once and then a pace per image: timed from one small
validation pass as a pace per image alone, the start-up made the large test pass look 1.7x longer than it was.
An evaluated image costs a forward pass of every scale, as does a training image of the phases that train heads on
frozen backbones (:data:`FORWARD_ONLY`): their images are pooled with the evaluated ones, so that the test pass is
not timed from 75 validation images alone (they made it look 1.5x longer; docs/BENCHMARKS.md, "Time left").

May import: nothing of racnn (plain arithmetic and a clock).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

# Seconds per optimiser step of each phase kind, relative to a classification step, with each epoch's checkpoint
# and pictures: rounded from the CPU recipe's run on a quiet machine (docs/BENCHMARKS.md, "Time left"); used only
# for kinds the run has not measured yet.
RELATIVE_COST = {"warmup": 1.0, "cls": 1.0, "apn": 0.6, "apn_pretrain": 0.55, "fusion": 0.35}
# Seconds per evaluated image, relative to a classification step's seconds per training image (the same run's test
# pass: 0.32); used until a validation pass or a FORWARD_ONLY phase has been timed.
EVAL_COST = 0.3
# Phases whose training images cost about what an evaluated image costs: every scale's forward pass, a backward
# through small heads only (the APNs on detached crops, the fusion heads).
FORWARD_ONLY = ("apn_pretrain", "fusion")


def validates(epoch: int, epochs: int, last_phase: bool, interval: int) -> bool:
    """Whether epoch ``epoch`` (from 1) of a phase of ``epochs`` epochs is validated, with
    ``train.eval_interval = interval``: the run's last epoch always, a phase's last with ``interval >= 0``,
    every ``interval``-th with ``interval > 0``."""
    phase_end = epoch == epochs
    return (phase_end and last_phase) or (phase_end and interval >= 0) or (interval > 0 and epoch % interval == 0)


class TimeLeft:
    """Seconds measured so far, and the estimate of what is left of the run; ``images_per_step`` is the training
    images of one optimiser step (the batch times ``train.grad_accum``)."""

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = max(images_per_step, 1)
        self.train: dict[str, list[float]] = {}  # kind -> [seconds, steps]
        self.eval = [0.0, 0]  # [seconds after each pass's first batch arrived, images]
        self.startup = [0.0, 0]  # [seconds until each pass's first batch arrived, passes]

    def trained(self, kind: str, seconds: float, steps: int) -> None:
        """An epoch of phase ``kind``: ``steps`` optimiser steps in ``seconds`` (with its checkpoint and logs)."""
        spent = self.train.setdefault(kind, [0.0, 0])
        spent[0] += seconds
        spent[1] += steps

    def evaluated(self, seconds: float, images: int, startup: float = 0.0) -> None:
        """An evaluation pass of ``images`` in ``seconds``, of which ``startup`` went by before its first batch."""
        startup = min(max(startup, 0.0), seconds)
        self.eval[0] += seconds - startup
        self.eval[1] += images
        self.startup[0] += startup
        self.startup[1] += 1

    def pass_seconds(self) -> float:
        """Seconds an evaluation pass spends before its first batch (0 until a pass was timed)."""
        return self.startup[0] / self.startup[1] if self.startup[1] else 0.0

    def step_seconds(self, kind: str) -> float | None:
        """Seconds per step of ``kind``: measured, else from the kinds measured (:data:`RELATIVE_COST`)."""
        seconds, steps = self.train.get(kind, (0.0, 0))
        if steps:
            return seconds / steps
        units = sum(steps * RELATIVE_COST.get(k, 1.0) for k, (_, steps) in self.train.items())
        if not units:
            return None
        per_unit = sum(seconds for seconds, _ in self.train.values()) / units
        return per_unit * RELATIVE_COST.get(kind, 1.0)

    def image_seconds(self) -> float | None:
        """Seconds per evaluated image: measured on the evaluation passes and the :data:`FORWARD_ONLY` phases'
        images together, else from the classification pace (:data:`EVAL_COST`)."""
        seconds, images = self.eval
        for kind in FORWARD_ONLY:
            spent, steps = self.train.get(kind, (0.0, 0))
            seconds, images = seconds + spent, images + steps * self.images_per_step
        if images:
            return seconds / images
        step = self.step_seconds("cls")
        return None if step is None else step / self.images_per_step * EVAL_COST

    def estimate(
        self, epochs_to_go: Sequence[tuple[str, int]], images_to_evaluate: int, passes: int = 0
    ) -> float | None:
        """Seconds left: ``epochs_to_go`` as ``(kind, optimiser steps)``, ``images_to_evaluate`` (the validation
        passes to come and the test pass, in images) in ``passes`` passes. None before anything was measured."""
        total = 0.0
        for kind, steps in epochs_to_go:
            per_step = self.step_seconds(kind)
            if per_step is None:
                return None
            total += per_step * steps
        if images_to_evaluate:
            per_image = self.image_seconds()
            if per_image is None:
                return None
            total += per_image * images_to_evaluate + self.pass_seconds() * passes
        return total


class TimedPass:
    """``iterable`` (a data loader), noting in :attr:`startup` the seconds its last pass took to give its first
    item: the loader's start-up, which a pass pays once whatever its length."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable
        self.startup = 0.0

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        self.startup = 0.0
        for i, item in enumerate(self.iterable):
            if i == 0:
                self.startup = time.perf_counter() - start
            yield item


def remaining(
    phases: Sequence[tuple[str, int]], index: int, epochs_done: int, interval: int
) -> tuple[list[tuple[str, int]], int]:
    """What is left of a run once ``epochs_done`` epochs of phase ``index`` are done: ``(kind, epochs)`` per phase
    to come (the current one first, if it has epochs left) and the number of validation passes among them.

    Args:
        phases: the schedule as ``(kind, epochs)``, in order.
        index: the phase in progress (0-based).
        epochs_done: its completed epochs.
        interval: ``train.eval_interval`` (see :func:`validates`).
    """
    to_go, validations = [], 0
    for i in range(index, len(phases)):
        kind, epochs = phases[i]
        first = epochs_done + 1 if i == index else 1
        if first > epochs:
            continue
        to_go.append((kind, epochs - first + 1))
        last_phase = i + 1 == len(phases)
        validations += sum(validates(e, epochs, last_phase, interval) for e in range(first, epochs + 1))
    return to_go, validations
