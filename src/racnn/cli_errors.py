"""What the commands refuse, and how they say it: one line on stderr, exit status 2.

The commands (``racnn train``, ``eval``, ``predict``, ``export``, ``demo``) share these checks so that a bad
option gets the same treatment everywhere: the key or file named, control characters escaped, no traceback, and
nothing on disk replaced that the command did not make (docs/HOSTILE_INPUTS.md lists every case).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from racnn.config import ConfigError
from racnn.safety import printable

__all__ = ["OutputError", "fail", "fresh_folder", "refuse_model_overrides", "writable_folder"]

USAGE = 2  # exit status of a refused input


class OutputError(ConfigError):
    """An output path the command must not or cannot write."""


def fail(prefix: str, error: BaseException | str, code: int = USAGE) -> int:
    """Print ``<prefix>error: <message>`` on stderr, control characters escaped; return ``code``.

    Messages that racnn lays out on several lines (a data layout's expected files) keep their line breaks; a
    line break that came from a name is escaped like any other control character.
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
