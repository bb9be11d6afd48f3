"""The files of a training run and the lines it logs.

Owns: the run folder (``output_dir/name``, never an existing one), a branch off another run's phase checkpoint
(:func:`branch_run`), reading a resume checkpoint (and the best weights it carries), the random
states saved in it, ``metrics.csv``, the TensorBoard writer, ``model.safetensors``, the epoch line, the run's
time left (:func:`eta_text`) and the phase label of progress messages.

May import: numpy, torch, safetensors, ``racnn.checkpoint``, ``racnn.config``, ``racnn.distributed`` and
``racnn.training.run_record``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from racnn.checkpoint import load_checkpoint, save_checkpoint
from racnn.config import Config, ConfigError, config_to_dict, save_config
from racnn.distributed import (
    DistInfo,
)
from racnn.safety import describe_os_error
from racnn.training.run_record import RunFinishedError, check_identity, finished_note, new_run_id, now, write_record


def phase_label(index: int, count: int, kind: str, round_index: int) -> str:
    return f"phase {index + 1}/{count} '{kind}'" + (f" (round {round_index})" if kind in ("cls", "apn") else "")


def format_duration(seconds: float) -> str:
    """``"~40 s"``, ``"~12 min"``, ``"~2.5 h"``: a rounded estimate, as long as it is worth reading."""
    if seconds < 90:
        return f"~{round(seconds)} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def eta_text(epochs_done: int, epochs_total: int, seconds: float | None) -> str:
    """``"epoch 3/12 of the run, ~4 min left"``: where the run stands across all its phases."""
    where = f"epoch {epochs_done}/{epochs_total} of the run"
    if epochs_done >= epochs_total:  # the test pass is what is left
        return f"{where}, testing next" + (f", {format_duration(seconds)} left" if seconds else "")
    return where if seconds is None else f"{where}, {format_duration(seconds)} left"


def interrupted_message(run_dir: Path) -> str:
    """What ``Ctrl-C`` prints: where the last completed epoch is and how to continue."""
    if not (run_dir / "last.pt").is_file():
        return "interrupted before the first epoch completed; nothing to resume"
    return (
        f"interrupted: the last completed epoch is saved in {run_dir / 'last.pt'} (the epoch in "
        f"progress is not); continue with:\n  racnn train --resume {run_dir}"
    )


def epoch_line(row: dict[str, Any]) -> str:
    where = f"[{row['phase']}" + (f" r{row['round']}" if row["phase"] in ("cls", "apn") else "") + f" e{row['epoch']}]"
    losses = " ".join(
        f"{k[6:]} {v:.4f}"
        for k, v in row.items()
        if k.startswith("train_") and k[6:] not in ("lr", "images_per_s", "steps") and not k.startswith("train_acc")
    )
    vals = " ".join(f"{k[9:]} {100 * v:.1f}" for k, v in row.items() if k.startswith("val_top1_"))
    untrained = f" (untrained: {row['untrained']})" if row.get("untrained") and vals else ""
    speed = f"{row.get('train_images_per_s', 0):.1f} img/s"
    return f"{where} {losses} | val top-1 {vals or '-'}{untrained} | {speed}"


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def tensorboard_writer(run_dir: Path, wanted: bool):
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def new_run_dir(cfg: Config, dist_info: DistInfo) -> Path:
    """``output_dir/name``, or ``name-1``, ``name-2``... if it exists; made by rank 0, shared with the others."""
    run_dir = Path(cfg.train.output_dir) / cfg.train.name
    if dist_info.is_main:
        run_dir = _claim(run_dir, cfg.train.output_dir)
        save_config(cfg, run_dir / "config.yaml")
    if dist_info.enabled:
        import torch.distributed as dist

        holder = [str(run_dir)]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    return run_dir


def _claim(base: Path, output_dir: str) -> Path:
    """Make and return ``base``, or ``name-1``, ``name-2``... if it is taken."""
    run_dir, n = base, 0
    while not _made(run_dir, output_dir):  # another run may take a name between the test and mkdir
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _made(run_dir: Path, output_dir: str) -> bool:
    """Make ``run_dir``; False when something is already there. An output folder that cannot hold it (a file,
    no permission) is the config's fault and says so."""
    if run_dir.exists():
        return False
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as e:
        raise ConfigError(f"train.output_dir {output_dir}: {describe_os_error(e, 'cannot make the run folder')}") from e
    return True


def load_resume(resume: str | Path) -> dict[str, Any]:
    """The resume checkpoint of ``resume`` (a run folder's ``last.pt``, or the file given), checked to be a
    training checkpoint with an intact state, written by the run of its folder (:func:`check_identity`)."""
    note = finished_note(resume)
    if note is not None:
        raise RunFinishedError(note)
    path = Path(resume)
    path = path / "last.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    for key in ("state", "rng"):
        if key not in ckpt:
            raise ConfigError(f"{path} is not a training checkpoint (no '{key}'); resume from a run's last.pt")
    problem = _state_problem(ckpt)
    if problem:
        raise ConfigError(f"{path}: its training state is damaged ({problem}); resume from an intact last.pt")
    check_identity(path.parent, path, ckpt)
    return ckpt


def best_weights(run_dir: Path, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The weights a resumed run had chosen on val so far: ``last.pt``'s ``best_model`` (its own ``model`` when
    the best epoch is its epoch); from a ``last.pt`` older than that entry, ``run_dir/best.pt``'s. None: none
    chosen yet."""
    if "best_model" not in ckpt:
        path = run_dir / "best.pt"
        return load_checkpoint(path)["model"] if path.is_file() else None
    if ckpt["best_model"] is not None:
        return ckpt["best_model"]
    state = ckpt["state"]
    return ckpt["model"] if state.get("best") is not None and state.get("best_epoch") == state["global_epoch"] else None


def _state_problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the resume state of a checkpoint (types the loop relies on), or None."""
    state, rng = ckpt["state"], ckpt["rng"]
    if not isinstance(state, dict) or not isinstance(rng, dict):
        return "'state' and 'rng' must be mappings"
    for key in ("phase_index", "epoch", "global_epoch", "global_step"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            return f"state.{key} must be a count, got {type(state.get(key)).__name__}"
    if not isinstance(state.get("history"), list) or not all(isinstance(row, dict) for row in state["history"]):
        return "state.history must be a list of rows"
    if not isinstance(state.get("metrics"), dict):
        return "state.metrics must be a mapping"
    missing = [key for key in ("torch", "cuda", "python", "numpy") if key not in rng]
    return f"rng has no {', '.join(missing)}" if missing else None


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy's global stream (what a run draws before its first epoch)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random stream, as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def phase_checkpoint(run_dir: Path, schedule: list[tuple[str, Any, int]], index: int) -> Path:
    """``run_dir/phase<N>_<kind>.pt``: ``last.pt`` as phase ``index`` (0-based, of ``schedule``) ended, kept with
    ``train.keep_phase_checkpoints``."""
    return run_dir / f"phase{index + 1}_{schedule[index][0]}.pt"


def branch_run(checkpoint: Path, cfg: Config, out_dir: Path) -> Path:
    """A new run folder that continues from another run's phase checkpoint (``train.keep_phase_checkpoints``)
    with ``cfg``: ``fit(cfg, resume=<the folder returned>)`` then runs ``cfg``'s schedule from where that phase
    ended. The folder is ``out_dir``, or ``out_dir-1``, ``out_dir-2``... if it is taken (as :func:`fit` names its
    own).

    ``cfg``'s schedule must match the source run's up to that phase (e.g. the same recipe with later phases
    changed). The source's model selection is not carried over: the branch chooses among its own epochs.
    """
    ckpt = load_checkpoint(checkpoint)
    ckpt["state"]["best"] = None
    ckpt["best_model"] = None
    ckpt["run_id"] = new_run_id()  # a run of its own: run.json and its checkpoints carry the new id
    ckpt["config"] = config_to_dict(cfg)  # what the branch runs (and its config.yaml says)
    out_dir = _claim(out_dir, str(out_dir.parent))
    save_config(cfg, out_dir / "config.yaml")
    write_record(out_dir, {"run_id": ckpt["run_id"], "started": now(), "branched_from": str(checkpoint)})
    save_checkpoint(out_dir / "last.pt", ckpt)
    return out_dir
