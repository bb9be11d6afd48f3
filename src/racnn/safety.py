"""Small guards for input that racnn does not control: names printed to a terminal, names that become files,
paths that must stay inside a folder, files that must not be replaced, failed writes told in words, and the mode
of files written atomically (the umask's, not ``mkstemp``'s private one).

Every command and the data layer use these helpers, so each rule is written once. Only the standard library is
imported here: any module of the package may import this one.
"""

from __future__ import annotations

import errno
import os
import re
import unicodedata
from pathlib import Path

__all__ = [
    "check_plain_name",
    "describe_os_error",
    "free_path",
    "is_inside",
    "printable",
    "spreadsheet_cell",
    "same_file",
    "share_like_open",
    "umask",
]

# Characters that change what a terminal shows without being text: C0 and C1 controls (ESC starts ANSI
# sequences, CR overwrites the line), DEL, the line and paragraph separators, and the bidirectional overrides
# and isolates (they reorder the rest of the line, e.g. make "gpj.exe" read "exe.jpg").
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every control character escaped as ``\\xNN`` / ``\\uNNNN``, ready for a terminal.

    Class names and file names come from data sets and checkpoints that someone else made: an ANSI escape
    sequence in one could recolour, hide or rewrite what the terminal shows. ``keep_newlines`` leaves ``"\\n"``
    alone for messages that racnn itself lays out on several lines.
    """
    text = str(text)
    if not any(_unsafe(c) for c in text):
        return text
    out = []
    for char in text:
        if not _unsafe(char) or (keep_newlines and char == "\n"):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


_PLAIN_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+")


def check_plain_name(value: str, key: str) -> str | None:
    """Why ``value`` cannot be one file or folder name made from user input, or None when it can.

    A name joined to a folder (``output_dir / name``) must not leave it: no path separator, not ``.`` or ``..``,
    not empty, no control character, not absurdly long.
    """
    if not value or not value.strip():
        return f"{key} must not be empty"
    if value in (".", "..") or not _PLAIN_NAME.fullmatch(value):
        return f"{key} must be a plain name without '/', '\\', control characters, '.' or '..', got {value!r}"
    if len(value.encode()) > 200:
        return f"{key} is longer than 200 bytes"
    return None


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every link resolved, lies inside ``root`` (also resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same existing file (through links, ``..`` or hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def free_path(path: str | os.PathLike, taken: set[str] | None = None) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ...

    ``taken`` holds names already promised to other files in the same folder.
    """
    path = Path(path)
    taken = taken or set()
    candidate, n = path, 1
    while candidate.name in taken or os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


_OS_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "something is already there",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
}


def umask() -> int:
    """The process's file-creation mask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not thread-safe, but racnn writes from one thread)
    os.umask(mask)
    return mask


def share_like_open(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would have (``0o666`` less the umask).

    Atomic writes go through ``tempfile.mkstemp`` (or safetensors' writer), whose files are private (``0o600``); a
    checkpoint renamed from one would stay unreadable to the user's group, unlike every other file of the run.
    """
    os.chmod(path, 0o666 & ~umask())


def describe_os_error(error: OSError, doing: str = "could not write", target: str | os.PathLike | None = None) -> str:
    """One line in words for an ``OSError``: ``could not write runs/x/last.pt: no space left on device``.

    ``target`` names the file the user knows when the error names another (e.g. a temporary file).
    """
    reason = _OS_REASONS.get(error.errno or 0) or (error.strerror or str(error) or type(error).__name__)
    target = target if target is not None else (error.filename if error.filename is not None else "")
    return printable(f"{doing} {target}: {reason}" if target else f"{doing}: {reason}")


def spreadsheet_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: a leading ``=``, ``+``, ``-``, ``@``, tab or carriage
    return would make it a formula (CSV injection), so such a cell gets a leading apostrophe."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
