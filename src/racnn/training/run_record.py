"""What a run folder records about the run itself: ``run.json`` and ``train.log``.

Owns: the run's identity (a run id written at its start, carried by every checkpoint, checked on resume together
with the config that fixes the run), where and how it ran (command line, versions, git commit, CPU/GPU, split
sizes; one entry per resumed session), the mark that it finished (``run.json``'s ``finished``: the resume
checkpoint is gone by then), and the ``train.log`` handler that copies the ``racnn`` logger's lines into the
folder while the run goes.

May import: torch, yaml, ``racnn.config``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from racnn.config import ConfigError

RUN_FILE = "run.json"
LOG_FILE = "train.log"
PACKAGES = ("racnn", "torch", "torchvision", "timm", "numpy")  # with Python, in run.json's "versions"
PHASES = ("warmup", "apn_pretrain", "cls", "apn", "fusion")


class RunFinishedError(ConfigError):
    """``fit(cfg, resume=RUN)`` of a run that has finished (``racnn train --resume`` says so and exits 0)."""


def now() -> str:
    """The time in UTC, ISO 8601 to the second (``2026-12-07T11:15:59Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return uuid.uuid4().hex


def versions() -> dict[str, str]:
    """Python's and each of :data:`PACKAGES`' version (``"not installed"`` for one that is missing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        if name == "racnn":  # the code that runs (its package is loaded), not an editable install's old metadata
            found[name] = sys.modules["racnn"].__version__
            continue
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit(source: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the racnn source tree when it is a git checkout (an editable install); None when
    it is not, or git is missing or fails: a run never stops for it."""
    root = source or Path(__file__).resolve().parents[3]  # src/racnn/training/ -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no") != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty} if commit else None


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def machine(device: torch.device) -> dict[str, Any]:
    """The CPU (model name, cores this process may use, cores in all), the GPUs torch sees and the run's device."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": cores,
        "cpu_cores_total": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def command_line(argv: list[str]) -> str:
    """The command as typed, shell-quoted: ``racnn train --config ...`` (also for ``python -m racnn``); a
    program's own name otherwise."""
    if not argv or not argv[0]:
        return ""
    name = Path(argv[0]).name
    name = "racnn" if name in ("__main__.py", "racnn") else name
    return shlex.join([name, *argv[1:]])


def session(
    device: torch.device, splits: dict[str, int | None], precision: str, command: str | None = None
) -> dict[str, Any]:
    """Where and how this process runs: time, command line (``command``, else :func:`command_line` of
    ``sys.argv``), working folder, versions, git, machine, splits."""
    return {
        "at": now(),
        "command": command if command is not None else command_line(sys.argv),
        "cwd": os.getcwd(),
        "versions": versions(),
        "git": git_commit(),
        "machine": machine(device),
        "precision": precision,
        "splits": splits,
    }


def start_lines(dataset: str, num_classes: int, splits: dict[str, int | None]) -> list[str]:
    """What a run prints at its start besides the folder and precision: the data and its split sizes, versions."""
    sizes = ", ".join(f"{split} {'-' if n is None else n}" for split, n in splits.items())
    return [
        f"data: {dataset}, {num_classes} classes; images: {sizes}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions().items()),
    ]


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/run.json``, or None when there is none (a run folder from before racnn wrote it)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run's record ({e})") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: not a run record (a JSON object with run_id)")
    return record


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def start_record(run_dir: Path, run_id: str, this_session: dict[str, Any]) -> dict[str, Any]:
    """``run.json`` of a new run: its id, then this session (:func:`session`) at the top level."""
    started = {key: value for key, value in this_session.items() if key != "at"}
    record = {"run_id": run_id, "started": this_session["at"], **started, "finished": None, "resumed": []}
    write_record(run_dir, record)
    return record


def resume_record(run_dir: Path, run_id: str, this_session: dict[str, Any]) -> dict[str, Any]:
    """``run.json`` with this resumed session appended (made, with what is known, for a folder that had none)."""
    record = read_record(run_dir) or {"run_id": run_id, "started": None, "finished": None}
    for key, value in this_session.items():  # a branched run's record starts with its id only
        if key != "at":
            record.setdefault(key, value)
    record.setdefault("resumed", []).append(this_session)
    record["splits"] = this_session["splits"]
    write_record(run_dir, record)
    return record


def finish_record(run_dir: Path, record: dict[str, Any], seconds: float, results: dict[str, float]) -> None:
    """Mark the run finished (what ``--resume`` reads once the resume checkpoint is gone)."""
    record.update(finished=now(), train_seconds=round(seconds, 1), results=results)
    write_record(run_dir, record)


def finished_note(resume: str | Path) -> str | None:
    """One line saying that the run ``resume`` names (its folder, or a checkpoint in it) has finished (``run.json``
    says so and its ``model.safetensors`` is there); None when it has not, or the folder has no record."""
    path = Path(resume)
    run_dir = path if path.is_dir() else path.parent
    try:
        record = read_record(run_dir)
    except ConfigError:
        return None
    if not record or not record.get("finished") or not (run_dir / "model.safetensors").is_file():
        return None  # not finished, or its model is gone: a kept last.pt may test it again
    results = record.get("results") or {}
    shown = "  ".join(f"{head} {100 * value:.2f}" for head, value in results.items() if head == "fused")
    return (
        f"{run_dir}: the run finished at {record['finished']}" + (f" (test top-1 {shown})" if shown else "")
        + f"; nothing to resume (a new run: racnn train --config {run_dir / 'config.yaml'})"
    )  # fmt: skip


def check_identity(run_dir: Path, checkpoint: Path, ckpt: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line) when ``ckpt`` was not written by the run of ``run_dir``: another run
    id than ``run.json``'s, or another model, seed or schedule than ``config.yaml``'s."""
    record = read_record(run_dir)
    if record is not None and ckpt.get("run_id") != record.get("run_id"):
        raise ConfigError(
            f"{checkpoint} belongs to another run (run id {ckpt.get('run_id') or 'none'}; {run_dir / RUN_FILE} "
            f"says {record.get('run_id')}): resume the folder it was written in"
        )
    stored = run_dir / "config.yaml"
    if not stored.is_file() or not isinstance(ckpt.get("config"), dict):
        return
    import yaml

    try:
        folder_cfg = yaml.safe_load(stored.read_text())
    except (OSError, yaml.YAMLError):
        return
    differs = _identity_difference(folder_cfg if isinstance(folder_cfg, dict) else {}, ckpt["config"])
    if differs:
        raise ConfigError(
            f"{checkpoint} does not belong to the run in {run_dir}: {differs}; resume the folder it was written in"
        )


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config (as :func:`racnn.config.config_to_dict` gives it) that make a run that run: the
    model, the seed and the schedule (what ``--resume`` refuses to change)."""
    train = cfg.get("train") or {}
    found = {f"model.{k}": v for k, v in (cfg.get("model") or {}).items() if k != "pretrained"}
    found["train.seed"], found["train.rounds"] = train.get("seed"), train.get("rounds")
    for phase in PHASES:
        found[f"train.{phase}.epochs"] = (train.get(phase) or {}).get("epochs")
    return found


def _identity_difference(folder: dict[str, Any], checkpoint: dict[str, Any]) -> str | None:
    mine, theirs = identity(folder), identity(checkpoint)
    for key in mine:
        if key == "model.num_classes" and 0 in (mine[key], theirs.get(key)):
            continue  # 0: counted from the data when the run starts (a branch's config.yaml)
        if mine[key] != theirs.get(key):
            return f"{key} is {mine[key]!r} in config.yaml, {theirs.get(key)!r} in the checkpoint"
    return None


class RunLog:
    """``train.log``: the ``racnn`` logger's lines (what the command shows on the terminal), each with its time,
    appended to the run folder while the run goes (a resumed run appends to the same file)."""

    def __init__(self, run_dir: Path) -> None:
        self.handler = logging.FileHandler(Path(run_dir) / LOG_FILE, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        logging.getLogger("racnn").addHandler(self.handler)

    def close(self) -> None:
        logging.getLogger("racnn").removeHandler(self.handler)
        self.handler.close()
