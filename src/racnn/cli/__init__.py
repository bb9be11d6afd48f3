"""The ``racnn`` command: a thin dispatcher. Each subcommand lives in its own module as
``add_arguments(parser)`` + ``main(args) -> int``; nothing runs at import time.

The command modules import torch only inside ``main``, so that building this parser (``racnn --help``,
``racnn train --help``) loads no deep-learning library (tests/test_cli.py checks it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from racnn.cli.flags import add_verbosity, configure_logging

# subcommand -> (module, one-line help)
COMMANDS = {
    "train": ("racnn.cli.train", "train RA-CNN from a YAML config (or resume a run)"),
    "eval": ("racnn.cli.evaluate", "evaluate a checkpoint: per-scale and fused accuracy table"),
    "predict": ("racnn.cli.predict", "classify images with a checkpoint; optional attention pictures"),
    "export": ("racnn.cli.export", "export a checkpoint to ONNX or TorchScript"),
    "app": ("racnn.app", "serve a checkpoint on a local web page and a JSON endpoint (needs racnn[app])"),
    "demo": ("racnn.cli.demo", "train and evaluate on the built-in synthetic set in a few minutes (CPU)"),
}
DATA_COMMANDS = {
    "verify": ("racnn.cli.verify", "check a data set on disk: layout, labels, unreadable images"),
}


def _add_commands(subparsers, commands: dict[str, tuple[str, str]]) -> None:
    for name, (module_name, help_text) in commands.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or help_text).strip()
        parser = subparsers.add_parser(
            name, help=help_text, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(parser)
        add_verbosity(parser, top_level=False)  # racnn train --quiet ... as well as racnn --quiet train ...
        parser.set_defaults(_main=module.main)


def get_args_parser() -> argparse.ArgumentParser:
    from racnn import __version__

    parser = argparse.ArgumentParser(
        prog="racnn",
        description="RA-CNN (Recurrent Attention CNN, CVPR 2017) for fine-grained recognition.",
    )
    parser.add_argument("--version", action="version", version=f"racnn {__version__}")
    add_verbosity(parser, top_level=True)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_commands(subparsers, COMMANDS)
    data = subparsers.add_parser("data", help="data set tools (racnn data verify ...)")
    data_sub = data.add_subparsers(title="data commands", metavar="COMMAND")
    _add_commands(data_sub, DATA_COMMANDS)
    data.set_defaults(_main=lambda args: data.print_help() or 2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_main"):
        parser.print_help()
        return 2
    configure_logging(args.verbosity)
    args.command_line = ["racnn", *(sys.argv[1:] if argv is None else argv)]  # what a run records in run.json
    try:
        return int(args._main(args) or 0)
    except BrokenPipeError:  # the reader went away (racnn predict ... | head): stop quietly, as SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
