"""Training and evaluation of RA-CNN (METHOD §3-4), one concern a module. Read in this order:

- :mod:`~racnn.training.schedule`: the phases (warm-up, APN pre-training, ``rounds`` x (classification, APN),
  fusion), what each trains and which modules stay in eval mode; one optimiser and schedule per phase.
- :mod:`~racnn.training.steps`: one short function per phase's losses.
- :mod:`~racnn.training.loop`: the epoch loop (mixed precision, accumulation, the non-finite check, progress).
- :mod:`~racnn.precision`: autocast for ``train.amp``.
- :mod:`~racnn.training.evaluation`: :func:`evaluate` and its metrics (top-k, boxes, confusion).
- :mod:`~racnn.training.loaders`: seeded items, samplers and loaders, the data sets of a config, object boxes.
- :mod:`~racnn.training.run`: :func:`fit`, the whole run (checkpoints, resume, logs, pictures), with the files
  it writes in :mod:`~racnn.training.run_files` and the compile wrapper in :mod:`~racnn.training.compiling`.
- :mod:`~racnn.training.baseline`: the single-scale baseline, :func:`train_baseline`.

Example:
    >>> from racnn.config import load_config
    >>> from racnn.training import fit
    >>> result = fit(load_config("synthetic_tiny"))  # doctest: +SKIP
    >>> result.metrics["top1_fused"]  # doctest: +SKIP
"""

from racnn.precision import autocast
from racnn.training.baseline import SingleScaleBaseline, train_baseline
from racnn.training.evaluation import evaluate, head_names, scalar_metrics, write_eval_files
from racnn.training.loaders import (
    build_datasets,
    build_split,
    make_eval_loader,
    make_train_loader,
    object_boxes_in_input,
)
from racnn.training.loop import NonFiniteLossError, StepContext, run_epoch
from racnn.training.run import TrainResult, fit
from racnn.training.schedule import (
    PHASES,
    build_optimizer,
    build_scheduler,
    expand_schedule,
    phase_parameters,
    prepare_phase,
    steps_per_epoch,
)
from racnn.training.steps import (
    EPOCH_FUNCTIONS,
    pretrain_apn_epoch,
    train_apn_epoch,
    train_classification_epoch,
    train_fusion_epoch,
)

__all__ = [
    "EPOCH_FUNCTIONS",
    "PHASES",
    "NonFiniteLossError",
    "SingleScaleBaseline",
    "StepContext",
    "TrainResult",
    "autocast",
    "build_datasets",
    "build_optimizer",
    "build_scheduler",
    "build_split",
    "evaluate",
    "expand_schedule",
    "fit",
    "head_names",
    "make_eval_loader",
    "make_train_loader",
    "object_boxes_in_input",
    "phase_parameters",
    "prepare_phase",
    "pretrain_apn_epoch",
    "run_epoch",
    "scalar_metrics",
    "steps_per_epoch",
    "train_apn_epoch",
    "train_baseline",
    "train_classification_epoch",
    "train_fusion_epoch",
    "write_eval_files",
]
