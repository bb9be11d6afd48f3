"""Check a data set on disk: its layout, its annotations and every image; print a table per split.

Exit status 0 when the data set is fine, 1 when a file or annotation is wrong, 2 for a usage error.

examples:
  racnn data verify --dataset cub --root /data/CUB_200_2011
  racnn data verify --dataset folder --root /data/my_birds --quick -j 8
"""

# The checks are racnn.data.verify (PIL, numpy, torch); this module holds the command and imports them only when it
# runs, so that ``racnn data verify --help`` is instant.

from __future__ import annotations

import argparse
import sys
from typing import Any

from racnn.cli.flags import add_workers

# The data sets racnn ships, for --help only: the registry (racnn.data.dataset_names) is what --dataset is checked
# against, so a data set registered by a program is accepted too. tests/test_cli.py keeps the two equal.
BUILT_IN = ("aircraft", "cars", "cub", "dogs", "flowers", "folder", "synthetic")


def dataset_name(name: str) -> str:
    """``--dataset``'s type: a registered data set name (checked when the command line is parsed)."""
    from racnn.data import dataset_names

    if name not in dataset_names():
        raise argparse.ArgumentTypeError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", required=True, type=dataset_name, metavar="NAME", help=f"data set name: {', '.join(BUILT_IN)}"
    )
    parser.add_argument("--root", default=None, help="the data set's root folder")
    parser.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="split to check (repeatable); default: every split of the layout",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--full",
        dest="full",
        action="store_true",
        default=True,
        help="open every image with PIL verify and decode it fully (the default)",
    )
    mode.add_argument(
        "--quick", dest="full", action="store_false", help="only read image headers and end markers (faster)"
    )
    add_workers(parser, "threads that check images, at most 64", 4)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=_parse_option,
        metavar="KEY=VALUE",
        help="data set option, e.g. annotation_level=family (repeatable)",
    )


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def main(args: argparse.Namespace) -> int:
    """Runs the check and prints the report; returns 0 when the data set is fine, 1 otherwise."""
    from racnn.data.verify import verify_dataset

    if args.dataset != "synthetic" and not args.root:
        print(f"error: --root is required for data set {args.dataset!r}", file=sys.stderr)
        return 2
    report = verify_dataset(
        args.dataset, args.root, splits=args.split, full=args.full, workers=args.workers, **dict(args.option)
    )
    print(report.format())
    return 0 if report.ok else 1
