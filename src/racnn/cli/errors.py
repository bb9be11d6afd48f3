"""What the commands refuse, and how they say it: one line on stderr, exit status 2.

The commands (``racnn train``, ``eval``, ``predict``, ``export``, ``demo``) share these checks so that a bad
option gets the same treatment everywhere: the key or file named, control characters escaped, no traceback, and
nothing on disk replaced that the command did not make (docs/HOSTILE_INPUTS.md lists every case).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from racnn.config import ConfigError, DataConfig
from racnn.safety import describe_os_error, printable

__all__ = [
    "OutputError",
    "check_classes",
    "fail",
    "fail_os",
    "fresh_folder",
    "refuse_model_overrides",
    "refuse_resume_overrides",
    "writable_folder",
]

USAGE = 2  # exit status of a refused input


class OutputError(ConfigError):
    """An output path the command must not or cannot write."""


def fail(prefix: str, error: BaseException | str, code: int = USAGE) -> int:
    """Print ``<prefix>error: <message>`` on stderr, control characters escaped; return ``code``.

    Messages that racnn lays out on several lines (a data layout's expected files) keep their line breaks; every
    other control character (an ANSI escape in a class or file name, a carriage return) is escaped.
    """
    print(f"{prefix}error: {printable(error, keep_newlines=True)}", file=sys.stderr)
    return code


def refuse_model_overrides(overrides: Iterable[str], why: str) -> None:
    """Raise when an override sets a ``model.*`` key where the model comes from a checkpoint.

    The weights fix the model: ``model.num_classes=5`` on a 12-class checkpoint either fails deep in the weight
    loading (resume) or is silently ignored (eval).
    """
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key == "model" or key.startswith("model."):
            raise ConfigError(f"--set {key}: {why}; model keys cannot be changed here")


PHASES = ("warmup", "apn_pretrain", "cls", "apn", "fusion")


def refuse_resume_overrides(overrides: Iterable[str]) -> None:
    """Raise for an override that ``--resume`` would silently ignore or that would make the saved position mean
    something else: the model, the run folder (``train.output_dir``, ``train.name``), the seed (the data order
    of the epochs to come) and the schedule (``train.rounds``, a phase's ``epochs``: the saved "phase 4, epoch 2"
    would point into another phase). Run settings such as ``train.device`` or ``data.root`` may change."""
    refuse_model_overrides(overrides, "a resumed run keeps the model stored in its last.pt")
    fixed = {"train.output_dir", "train.name", "train.seed", "train.rounds"}
    fixed |= {f"train.{phase}" for phase in PHASES} | {f"train.{phase}.epochs" for phase in PHASES}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in fixed:
            raise ConfigError(
                f"--set {key}: a resumed run keeps its run folder, seed and schedule, so that it continues exactly; "
                "start a new run to change it"
            )


def fail_os(prefix: str, error: OSError, code: int = 1) -> int:
    """:func:`fail` for a file that could not be read or written, in words; a closed pipe (``racnn predict ... |
    head``) is not an error of racnn's and goes up to :func:`racnn.cli.main`, which exits quietly."""
    if isinstance(error, BrokenPipeError):
        raise error
    return fail(prefix, describe_os_error(error), code=code)


def writable_folder(path: Path, what: str) -> None:
    """Raise :class:`OutputError` when ``path`` (to be made if missing) cannot be a folder: a file is there."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
            return


def fresh_folder(folder: Path, names: Iterable[str], explicit: bool, what: str) -> Path:
    """The folder a command writes ``names`` into, without replacing any file already there.

    ``explicit`` (the user named the folder): refuse when any of ``names`` exists in it. Otherwise (a default
    folder): ``folder``, or ``folder-1``, ``folder-2``, ... (as run folders) when it already holds one of them.
    """
    names = list(names)
    writable_folder(folder, what)

    def taken(candidate: Path) -> list[str]:
        return [name for name in names if (candidate / name).exists()]

    if explicit:
        clash = taken(folder)
        if clash:
            raise OutputError(
                f"{what} {folder} already holds {', '.join(clash)}; racnn does not replace files it did not write "
                "in this command: give a new or empty folder"
            )
        return folder
    candidate, n = folder, 0
    while taken(candidate):
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
        writable_folder(candidate, what)
    return candidate


def check_classes(checkpoint: str | Path, class_names: list[str], dataset, data: DataConfig) -> None:
    """Refuse a data set whose classes are not the checkpoint's: its accuracy would be computed against labels
    that mean other classes (a 12-class model on a 3-class folder scored 33 % under the model's names)."""
    names = list(getattr(dataset, "classes", None) or [])
    where = f"data set {data.dataset}" + (f" at {data.root}" if data.root else "")
    if len(names) != len(class_names):
        raise ConfigError(
            f"checkpoint {checkpoint} has {len(class_names)} classes ({_few(class_names)}); the {where} has "
            f"{len(names)} ({_few(names)}): use the data set the model was trained on"
        )
    if class_names == [str(i) for i in range(len(class_names))]:
        return  # the checkpoint stores no names: the count is all there is to compare
    differ = [i for i, (a, b) in enumerate(zip(class_names, names, strict=True)) if a != b]
    if differ:
        i = differ[0]
        raise ConfigError(
            f"checkpoint {checkpoint} and the {where} name {len(differ)} class(es) differently, first label {i}: "
            f"{class_names[i]!r} in the checkpoint, {names[i]!r} in the data set"
        )


def _few(names: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (", ..." if len(names) > count else "")
