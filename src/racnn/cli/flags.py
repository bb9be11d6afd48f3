"""The flags several commands share, defined once so that they read and behave the same everywhere.

``--device``, ``-b/--batch-size``, ``-j/--workers`` and ``--amp`` (train, eval, predict, export, demo, app where they
apply), ``--checkpoint``'s help,
``-q/--quiet`` and ``-v/--verbose`` (every command, before or after its name), and the logging they set up.

May import: the standard library only: ``racnn --help`` and ``racnn SUB --help`` must not load torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = [
    "AMP_CHOICES",
    "CHECKPOINT_HELP",
    "DEVICES",
    "add_amp",
    "add_batch_size",
    "add_device",
    "add_verbosity",
    "add_workers",
    "configure_logging",
    "log_level",
]

DEVICES = "auto | cpu | cuda | cuda:N | mps"
AMP_CHOICES = ("auto", "none", "bf16", "fp16")  # racnn.precision.AMP_CHOICES, written out (a test keeps them equal)
AMP_HELP = (
    "precision: auto (bf16 where this device has fast bf16 kernels: a CUDA GPU with bf16, a CPU with oneDNN bf16; "
    "else fp32), none (fp32), bf16, fp16 (CUDA)"
)
CHECKPOINT_HELP = (
    "a run folder (its model.safetensors; best.pt first when kept), a run's best.pt, last.pt or model.safetensors, "
    "a folder written by racnn.save_pretrained, or hf-hub:owner/name (the Hugging Face Hub or its cache)"
)


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _help(what: str, default: object) -> str:
    return what if default is None else f"{what} (default {default})"


def add_device(parser: argparse.ArgumentParser, default: str | None, what: str = DEVICES) -> None:
    """``--device``; ``default=None`` keeps the config's ``train.device`` (``what`` says so)."""
    parser.add_argument("--device", default=default, metavar="DEVICE", help=_help(what, default))


def add_batch_size(
    parser: argparse.ArgumentParser, what: str, default: int | None, aliases: tuple[str, ...] = ()
) -> None:
    """``-b/--batch-size`` (plus older spellings in ``aliases``); ``default=None`` keeps the config's value."""
    parser.add_argument(
        "-b", "--batch-size", *aliases, dest="batch_size", type=positive_int, default=default, metavar="N",
        help=_help(what, default),
    )  # fmt: skip


def add_workers(parser: argparse.ArgumentParser, what: str, default: int | None) -> None:
    """``-j/--workers``: processes or threads that read and decode images (0: the main one does)."""
    parser.add_argument(
        "-j", "--workers", type=non_negative_int, default=default, metavar="N", help=_help(what, default)
    )


def add_amp(parser: argparse.ArgumentParser, default: str | None = "auto", what: str = AMP_HELP) -> None:
    """``--amp auto | none | bf16 | fp16`` (:func:`racnn.precision.resolve_amp` decides what ``auto`` is)."""
    parser.add_argument("--amp", choices=AMP_CHOICES, default=default, help=_help(what, default))


def add_verbosity(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """``-q/--quiet`` and ``-v/--verbose``. On a subcommand they default to "not given" (``SUPPRESS``), so that
    ``racnn --quiet train ...`` is not undone by the subcommand's own default."""
    default = None if top_level else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const="quiet", default=default,
        help="warnings and errors only, no progress bars; results still go to stdout",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default=default,
        help="also debug messages on stderr",
    )  # fmt: skip


def log_level(verbosity: str | None) -> int:
    return {"quiet": logging.WARNING, "verbose": logging.DEBUG}.get(verbosity or "", logging.INFO)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirected stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(verbosity: str | None) -> None:
    """Show the ``racnn`` logger's messages on stderr at the level ``verbosity`` asks for (the commands' job;
    the library only logs, so that a program using it decides what it sees)."""
    logger = logging.getLogger("racnn")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)  # a second main() in one process (tests) replaces the first one's
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(log_level(verbosity))
    logger.propagate = False  # a program that also configured the root logger gets each line once
