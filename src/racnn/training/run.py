"""The whole training run: :func:`fit`.

Owns: :class:`TrainResult` and the run's state and steps (:class:`_Run`): building the model and the data,
running each phase of the schedule epoch by epoch, evaluating, saving ``last.pt`` (with the best weights so far;
``best.pt`` too with ``train.keep_checkpoints``) and the final ``model.safetensors``, resuming exactly, logs and
pictures. The files it writes and reads back are made by :mod:`racnn.training.run_files`,
:mod:`racnn.training.run_record` (``run.json``, ``train.log``) and :mod:`racnn.training.run_outputs` (pictures,
TensorBoard, the model card and the finished folder); the time left is :mod:`racnn.training.time_left`'s.

May import: everything below it in ``racnn.training`` and the core modules (``racnn.modeling.model``, ``racnn.config``,
``racnn.checkpoint``, ``racnn.distributed``, ``racnn.precision``, ``racnn.pictures.model_pictures``,
``racnn.pictures.plots``).
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from racnn.checkpoint import CheckpointError, save_checkpoint, save_model_file
from racnn.config import Config, ConfigError, config_to_dict, resolve_device
from racnn.distributed import (
    DistInfo,
    broadcast_buffers,
    cleanup,
    init_distributed,
)
from racnn.modeling.heads import answer_head, head_names, heads_trained_by
from racnn.modeling.model import RACNN
from racnn.precision import Precision, choose_precision, warn_slow_bf16
from racnn.training.compiling import CompiledOrEager
from racnn.training.evaluation import evaluate, scalar_metrics
from racnn.training.loaders import (
    build_datasets,
    class_names_of,
    count_classes,
    make_eval_loader,
    make_train_loader,
    object_boxes_in_input,
)
from racnn.training.loop import StepContext
from racnn.training.run_files import (
    best_weights,
    epoch_line,
    eta_text,
    format_duration,
    interrupted_message,
    load_resume,
    new_run_dir,
    phase_checkpoint,
    phase_label,
    rng_state,
    seed_everything,
    set_rng_state,
    tensorboard_writer,
    write_csv,
)
from racnn.training.run_outputs import FINAL_PICTURE, attention_picture, finish_folder, tensorboard_hparams
from racnn.training.run_record import RunLog, new_run_id, resume_record, session, start_lines, start_record
from racnn.training.schedule import (
    build_optimizer,
    build_scheduler,
    expand_schedule,
    prepare_phase,
    run_position,
    steps_per_epoch,
)
from racnn.training.steps import EPOCH_FUNCTIONS
from racnn.training.time_left import TimedPass, TimeLeft, remaining, validates

log = logging.getLogger(__name__)  # shown by the racnn command; a program using fit() decides for itself


@dataclass
class TrainResult:
    """What :func:`fit` returns: the run folder, the test metrics of the model chosen on val (the split is read
    once, at the end), one dict per epoch, and the heads trained in the chosen model (the others answer at random
    and are left out of reports)."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    trained_heads: list[str] = field(default_factory=list)


def fit(cfg: Config, resume: str | Path | None = None, *, command: str | None = None) -> TrainResult:
    """Train RA-CNN with the schedule of ``cfg.train`` (see docs/TRAINING.md); under torchrun, with DDP.

    Args:
        cfg: the configuration (not modified; the resolved copy is saved in the run folder).
        resume: a run folder (or its ``last.pt``) to continue exactly where its last completed epoch ended.
        command: the command line ``run.json`` records (default: this process's ``sys.argv``).

    Returns:
        :class:`TrainResult`. ``Ctrl-C`` raises ``KeyboardInterrupt`` after saying how to resume.
    """
    device = resolve_device(cfg.train.device)
    try:
        precision = choose_precision(cfg.train.amp, device, cfg.train.channels_last)
    except ConfigError as e:
        raise ConfigError(f"train.{e}") from None
    warn_slow_bf16(device, precision.amp)
    dist_info, device = init_distributed(device)
    run = None
    try:
        try:
            run = _Run(copy.deepcopy(cfg), device, dist_info, resume, precision, command)
        except ValueError as e:  # a backbone, data set option or class count that does not fit: the config's fault
            raise e if isinstance(e, (ConfigError, CheckpointError)) else ConfigError(str(e)) from e
        return run.train()
    finally:
        # Free the run now, and with it the loaders' persistent worker processes: left to a later garbage collection,
        # it may happen inside a worker forked by the next run in this process, which then prints "can only test a
        # child process" tracebacks (one process running several fits: benchmarks/accuracy.py, a notebook).
        run = None
        gc.collect()
        if dist_info.enabled:
            cleanup()


class _Run:
    """The state of one training run and the steps of its loop, each a short method."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        dist_info: DistInfo,
        resume: str | Path | None,
        precision: Precision,
        command: str | None = None,
    ) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist_info
        self.precision = precision
        # The settings the steps run with: train.amp=auto resolved for this device (the config keeps "auto", so a
        # resumed or evaluated run decides again on its own machine).
        self.run_settings = replace(cfg.train, amp=precision.amp, channels_last=precision.channels_last)
        self.main = dist_info.is_main
        ckpt = load_resume(resume) if resume is not None else None
        seed_everything(cfg.train.seed)
        self.model, self.mean, self.std = self._build_model(ckpt)
        self.train_set, self.val_set, self.test_set = build_datasets(cfg, self.mean, self.std)
        self.class_names = class_names_of(self.test_set, cfg.model.num_classes)
        val_size = len(self.val_set) if self.val_set is not None else None
        self.splits = {"train": len(self.train_set), "val": val_size, "test": len(self.test_set)}
        self.train_loader, self.sampler = make_train_loader(
            self.train_set, cfg.data.batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers,
            dist_info=dist_info, pin_memory=device.type == "cuda",
        )  # fmt: skip
        self.eval_sets = {"val": self.val_set, "test": self.test_set}
        self.eval_loaders = {
            split: make_eval_loader(
                data,
                cfg.data.eval_batch_size,
                num_workers=cfg.data.num_workers,
                dist_info=dist_info,
                pin_memory=device.type == "cuda",
            )  # fmt: skip
            for split, data in self.eval_sets.items()
            if data is not None
        }
        self.object_boxes = {
            split: object_boxes_in_input(data, cfg.data.source_size or cfg.model.input_size, cfg.data.resize_ratio)
            for split, data in self.eval_sets.items() if data is not None
        }  # fmt: skip
        self.schedule = expand_schedule(cfg.train)
        self.scaler = torch.amp.GradScaler("cuda") if precision.amp == "fp16" else None
        self.state = {"phase_index": 0, "epoch": 0, "global_epoch": 0, "global_step": 0, "best": None, "trained": []}
        self.best_model: dict[str, Any] | None = None  # the weights best.pt holds, to be tested at the end
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.resume_ckpt = ckpt
        self.run_id = (ckpt or {}).get("run_id") or new_run_id()  # a run from before run ids gets one now
        if ckpt is not None:
            self.run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
            self.state.update(ckpt["state"])
            self.history = list(ckpt["state"]["history"])
            self.metrics = dict(ckpt["state"]["metrics"])
            self.best_model = best_weights(self.run_dir, ckpt)
        else:
            self.run_dir = new_run_dir(cfg, dist_info)
        self.writer = tensorboard_writer(self.run_dir, cfg.train.tensorboard and self.main)
        self.model.trained_heads = self.state["trained"]  # the same list, grown as phases end
        self.pace, self.eval_startup = TimeLeft(cfg.data.batch_size * cfg.train.grad_accum), 0.0  # the last pass's wait
        self.run_log, self.record = None, {}
        if self.main:
            self.run_log = RunLog(self.run_dir)
            now = session(device, self.splits, "fp32" if precision.amp == "none" else precision.amp, command)
            self.record = (resume_record if ckpt is not None else start_record)(self.run_dir, self.run_id, now)

    # -- set-up ------------------------------------------------------------------------------------------

    def _build_model(self, ckpt: dict | None):
        cfg = self.cfg
        if cfg.model.num_classes == 0:
            cfg.model.num_classes = count_classes(cfg)
        model_cfg = replace(cfg.model, pretrained=None) if ckpt is not None else cfg.model
        model = RACNN.from_config(model_cfg)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        model.to(self.device)
        if self.precision.channels_last:
            model.to(memory_format=torch.channels_last)
        return model, list(model.mean), list(model.std)

    def _wrap(self, kind: str) -> nn.Module:
        """DDP (rebuilt per phase, after the phase's parameters are chosen) and torch.compile, if asked."""
        net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DDP(self.model, device_ids=ids)
        if self.cfg.train.compile:
            net = CompiledOrEager(net)
        return net

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        if self.main:
            log.info(f"run folder: {self.run_dir}  ({len(self.schedule)} phases, device {self.device})")
            log.info(self.precision.describe())
            for line in start_lines(self.cfg.data.dataset, self.cfg.model.num_classes, self.splits):
                log.info(line)
        batches, steps = steps_per_epoch(self.train_loader, self.cfg.train)
        phases = " -> ".join(kind for kind, _, _ in self.schedule)
        log.debug(f"{batches} batches and {steps} optimiser steps per epoch; phases: {phases}")
        self.started = self.clock = time.perf_counter()  # this session's start; the last epoch's end
        self.seconds_before = float(self.state.get("seconds", 0.0))  # earlier sessions of a resumed run
        try:
            for index in range(self.state["phase_index"], len(self.schedule)):
                self._run_phase(index)
            self._test()
            self._finish()
        except KeyboardInterrupt:
            if self.main:
                log.warning(interrupted_message(self.run_dir))
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.run_log is not None:
                self.run_log.close()
        return TrainResult(self.run_dir, self.metrics, self.history, list(self._chosen_trained()))

    def _run_phase(self, index: int) -> None:
        kind, phase, round_index = self.schedule[index]
        trainable = prepare_phase(self.model, kind)
        optimizer = build_optimizer(trainable, phase)
        _, steps = steps_per_epoch(self.train_loader, self.cfg.train)
        scheduler = build_scheduler(optimizer, phase, steps * phase.epochs)
        first_epoch = self._restore(optimizer, scheduler)
        if kind == "fusion" and first_epoch == 0 and self.cfg.train.fusion_init == "classifiers":
            self._init_fusion()
            self._mark_trained("fusion")
        net = self._wrap(kind)
        where = phase_label(index, len(self.schedule), kind, round_index)
        for epoch in range(first_epoch, phase.epochs):
            ctx = StepContext(
                self.device, self.run_settings, self.scaler, f"{where}, epoch {epoch + 1}/{phase.epochs}",
                progress=self.cfg.train.progress and self.main and sys.stderr.isatty(), world_size=self.dist.world_size,
            )  # fmt: skip
            self.sampler.set_epoch(self.state["global_epoch"])
            stats = EPOCH_FUNCTIONS[kind](self.model, self.train_loader, optimizer, scheduler, ctx, net=net)
            self._end_epoch(index, epoch, stats, optimizer, scheduler)
        self._end_phase(index)

    def _init_fusion(self) -> None:
        """``train.fusion_init=classifiers``: the fusion heads start as the sum of the scales' classifiers, scaled
        by the feature norms of the first 32 validation images (training images where there is no val; at most one
        evaluation batch; the same images on every process and on resume)."""
        count = min(32, self.cfg.data.eval_batch_size)
        if self.val_set is not None:
            items = [self.val_set[i] for i in range(min(len(self.val_set), count))]
        else:
            data = self.train_loader.dataset
            items = [data[(self.state["global_epoch"], i)] for i in range(min(len(data), count))]
        images = default_collate([item[0] for item in items])  # a tensor, or [input, source] (data.source_size)
        ctx = StepContext(self.device, self.run_settings)
        inputs, _ = ctx.to_device(images, torch.zeros(0))
        with torch.no_grad(), ctx.autocast():
            out = self.model(*inputs)
        self.model.init_fusion_from_classifiers(out.features)

    def _restore(self, optimizer, scheduler) -> int:
        """The epoch to start the phase at: 0, or, for the first phase of a resumed run, the saved one (with the
        saved optimiser, scheduler, scaler and random streams)."""
        ckpt, self.resume_ckpt = self.resume_ckpt, None
        if ckpt is None:
            return 0
        if ckpt["optimizer"] is not None:  # None when the saved epoch ended its phase: a fresh pair then
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return ckpt["state"]["epoch"]

    def _end_epoch(self, index: int, epoch: int, stats: dict, optimizer, scheduler) -> None:
        kind, phase, round_index = self.schedule[index]
        broadcast_buffers(self.model)  # one model on every process for the evaluation and the checkpoint
        self._mark_trained(kind)
        self.state.update(phase_index=index, epoch=epoch + 1, global_epoch=self.state["global_epoch"] + 1)
        self.state["global_step"] += int(stats["steps"])
        last = epoch + 1 == phase.epochs
        interval = self.cfg.train.eval_interval
        row = {"phase": kind, "phase_index": index, "round": round_index, "epoch": epoch + 1}
        row["global_epoch"] = self.state["global_epoch"]
        row.update({f"train_{k}": v for k, v in stats.items()})
        val_seconds = 0.0  # none: no pass to time (the time left counts the passes that ran)
        if validates(epoch + 1, phase.epochs, index + 1 == len(self.schedule), interval):
            val_seconds = -time.perf_counter()
            row.update(self._validate())
            val_seconds += time.perf_counter()
        eta = self._eta(index, epoch + 1, int(stats["steps"]), val_seconds, row)
        self.history.append(row)
        if self.main:
            log.info(f"{epoch_line(row)} | {eta}")
            self._write_logs(row)
        if last:  # a resume continues with the next phase and its fresh optimiser
            self.state.update(phase_index=index + 1, epoch=0)
            optimizer = scheduler = None
        self._save(optimizer, scheduler, row)

    def _eta(self, index: int, epochs_done: int, steps: int, val_seconds: float, row: dict[str, Any]) -> str:
        """Where the run stands and its time left (:class:`TimeLeft`: each phase kind at its own pace, the
        validation passes to come and the test pass); records ``elapsed_s`` and ``time_left_s`` in ``row``."""
        now = time.perf_counter()
        self.pace.trained(self.schedule[index][0], now - self.clock - val_seconds, steps)
        if val_seconds > 0 and "val" in self.eval_loaders:
            self.pace.evaluated(val_seconds, len(self.val_set), self.eval_startup)
        self.clock = now
        _, per_epoch = steps_per_epoch(self.train_loader, self.cfg.train)
        phases = [(kind, phase.epochs) for kind, phase, _ in self.schedule]
        epochs_to_go, validations = remaining(phases, index, epochs_done, self.cfg.train.eval_interval)
        images = validations * (self.splits["val"] or 0) + self.splits["test"]
        left = self.pace.estimate([(kind, n * per_epoch) for kind, n in epochs_to_go], images, validations + 1)
        row.update(elapsed_s=round(self.seconds_before + now - self.started, 2), time_left_s=left)
        done, total = run_position(self.schedule, index, epochs_done)
        return eta_text(done, total, left)

    def _mark_trained(self, kind: str) -> None:
        trained = self.state["trained"]
        trained += [h for h in heads_trained_by(kind, self.cfg.model.num_scales) if h not in trained]

    def _selected_head(self, trained: list[str] | None = None) -> str:
        """The head ``train.best_metric`` names, or the one answering for it while it is untrained."""
        head = self.cfg.train.best_metric.split("_", 1)[-1]
        head = head if head in head_names(self.cfg.model.num_scales) else "fused"
        return answer_head(head, self.state["trained"] if trained is None else trained, self.cfg.model.num_scales)

    def _evaluate(self, split: str, out_dir: Path | None = None, trained: list[str] | None = None) -> dict[str, Any]:
        loader = TimedPass(self.eval_loaders[split])  # its start-up, for the time left
        metrics = evaluate(
            self.model, loader, device=self.device, margin=self.cfg.train.margin,
            amp=self.precision.amp, channels_last=self.precision.channels_last, object_boxes=self.object_boxes[split],
            class_names=self.class_names, confusion_head=self._selected_head(trained), out_dir=out_dir,
        )  # fmt: skip
        self.eval_startup = loader.startup
        return metrics

    def _validate(self) -> dict[str, Any]:
        """Val metrics of the trained heads, as ``val_<metric>`` (none without a val split); ``untrained`` lists
        the heads left out."""
        if "val" not in self.eval_loaders:
            return {}
        trained = set(self.state["trained"])
        untrained = [h for h in head_names(self.cfg.model.num_scales) if h not in trained]
        metrics = {
            f"val_{key}": value
            for key, value in scalar_metrics(self._evaluate("val")).items()
            if not key.startswith(tuple(f"top{k}_{h}" for k in (1, 5) for h in untrained))
        }
        return {**metrics, "untrained": " ".join(untrained)} if untrained else metrics

    def _test(self) -> None:
        """Read the test split once, with the model chosen on val (the last one without a val split)."""
        last = None
        if self.best_model is not None:
            last = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.best_model)
        trained = self._chosen_trained()
        self.metrics = self._evaluate("test", self.run_dir if self.main else None, trained)
        self.metrics["chosen_epoch"] = chosen = self.state.get("best_epoch", self.state["global_epoch"])
        if self.main:
            path = self.run_dir / "model.safetensors"
            save_model_file(self.model, self.cfg, self.class_names, path, trained, self.run_id)
            if self.cfg.train.visualize:
                after = "after fusion" if "fused" in trained else "before fusion"
                title = f"RA-CNN attention of the tested model (epoch {chosen}, {after})"
                self._attention_picture(title, FINAL_PICTURE, trained)
        if last is not None:  # the model object ends as trained, as last.pt holds it
            self.model.load_state_dict(last)

    def _end_phase(self, index: int) -> None:
        kind, _, round_index = self.schedule[index]
        following = self.schedule[index + 1] if index + 1 < len(self.schedule) else None
        round_over = kind in ("apn_pretrain", "cls", "apn") and (following is None or following[2] != round_index)
        if round_over and self.main and self.cfg.train.visualize:
            title = f"RA-CNN attention after round {round_index}"
            self._attention_picture(title, f"attention_round{round_index}.png")

    def _attention_picture(self, title: str, name: str, trained: list[str] | None = None) -> None:
        """The first 8 val images (training images without a val split), captioned with the head the run is scored
        on (``train.best_metric``'s), to ``name`` in the folder and to TensorBoard."""
        shown = self.val_set if self.val_set is not None else self.train_set
        drawn = (self.mean, self.std, self.class_names, title, self._selected_head(trained), self.run_dir / name)
        boxes = self.object_boxes.get("val") if self.val_set is not None else None  # train images are cropped at random
        attention_picture(self.model, shown, *drawn, self.writer, self.state["global_epoch"], boxes)

    # -- output ------------------------------------------------------------------------------------------

    def _write_logs(self, row: dict[str, Any]) -> None:
        write_csv(self.history, self.run_dir / "metrics.csv")
        if self.cfg.train.visualize:
            from racnn.pictures.plots import plot_training_curves

            plot_training_curves(self.history, self.run_dir / "curves.png")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("phase_index", "round", "epoch", "global_epoch"):
                    self.writer.add_scalar(key, value, row["global_epoch"])
            self.writer.flush()

    def _save(self, optimizer, scheduler, row: dict[str, Any]) -> None:
        """``last.pt`` (everything needed to resume), and ``best.pt`` when ``train.best_metric`` improved."""
        metric = self.cfg.train.best_metric.split("_", 1)[0] + "_" + self._selected_head()
        value = row.get(f"val_{metric}")
        # A tie goes to the later epoch: the more trained model (the fusion heads over the mean they start from).
        improved = value is not None and (self.state["best"] is None or value >= self.state["best"])
        ended = self.state["phase_index"] >= len(self.schedule)  # the run's last epoch
        keep_last = "val" not in self.eval_loaders and ended  # nothing to choose on: best.pt is the last model
        if improved:
            self.state.update(best=value, best_epoch=self.state["global_epoch"], best_metric=f"val_{metric}")
            self.state["best_trained"] = list(self.state["trained"])
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if not self.main:
            return
        self.state["seconds"] = self.seconds_before + time.perf_counter() - self.started
        state = {**self.state, "history": self.history, "metrics": scalar_metrics(self.metrics)}
        current = self.state.get("best_epoch") == self.state["global_epoch"]  # the best weights are the model's
        payload = {
            "run_id": self.run_id,
            "config": config_to_dict(self.cfg),
            "class_names": self.class_names,
            "trained_heads": list(self.state["trained"]),
            "model": self.model.state_dict(),
            "state": state,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "best_model": None if current or self.best_model is None else self.best_model,
        }
        save_checkpoint(self.run_dir / "last.pt", payload)
        if self.cfg.train.keep_phase_checkpoints and payload["optimizer"] is None:  # the epoch ended its phase
            index = self.state["phase_index"] - 1
            shutil.copyfile(self.run_dir / "last.pt", phase_checkpoint(self.run_dir, self.schedule, index))
        if self.cfg.train.keep_checkpoints and (improved or keep_last):
            resume_only = ("optimizer", "scheduler", "scaler", "rng", "best_model")
            best = {k: v for k, v in payload.items() if k not in resume_only}
            save_checkpoint(self.run_dir / "best.pt", best)

    def _finish(self) -> None:
        if not self.main:
            return
        trained = set(self._chosen_trained())
        top = {k[5:]: v for k, v in scalar_metrics(self.metrics).items() if k.startswith("top1_") and k[5:] in trained}
        how = (
            f"the model of epoch {self.state['best_epoch']}, chosen on {self.state['best_metric']}"
            if self.best_model is not None
            else "the last model (no val split to choose on)"
        )
        log.info(f"test top-1 ({how}): " + "  ".join(f"{k} {100 * v:.2f}" for k, v in top.items()))
        seconds = self.seconds_before + time.perf_counter() - self.started
        if self.writer is not None:
            tensorboard_hparams(self.writer, self.cfg, scalar_metrics(self.metrics), list(trained))
        finish_folder(self.run_dir, self.cfg, self.record, scalar_metrics(self.metrics), list(trained), seconds)
        kept = "best.pt, last.pt, " if self.cfg.train.keep_checkpoints else ""
        log.info(f"done in {format_duration(seconds)[1:]}: {self.run_dir} ({kept}model.safetensors, README.md)")

    def _chosen_trained(self) -> list[str]:
        """The heads trained in the model that is tested and shipped (the one chosen on val, else the last)."""
        return (
            self.state.get("best_trained", self.state["trained"])
            if self.best_model is not None
            else self.state["trained"]
        )
