"""Classify images with a trained RA-CNN checkpoint.

Arguments are image files or folders (expanded to the image files inside, sorted; --recursive to go into
sub-folders). Prints one row per image: the fused (all-scale) top-1 class and probability, then each scale's
top-1. --json prints one JSON object per line instead, with the top-k of every scale and fusion head and the
attention boxes in pixels of the original image. --save-viz DIR writes an attention picture per image.

A missing or unreadable image is reported on stderr (and as {"file": ..., "error": ...} with --json); the
others are still classified. Exit status: 0 all images classified, 1 some failed, 2 usage error (e.g. a
checkpoint that cannot be loaded).

Example:
  racnn predict --checkpoint runs/cub photos/ --topk 3 --save-viz viz/
  racnn predict --checkpoint runs/cub photos/ --json --device cpu -b 32 -j 4 > answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from racnn.cli.errors import OutputError, fail, fail_os, writable_folder
from racnn.cli.flags import CHECKPOINT_HELP, add_amp, add_batch_size, add_device, add_workers
from racnn.config import ConfigError, resolve_device
from racnn.safety import free_path, printable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_NAME_WIDTH = 24  # class names longer than this are cut in the table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--topk", type=int, default=5, metavar="K", help="classes reported per scale with --json (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    parser.add_argument("--save-viz", metavar="DIR", help="write an attention picture (PNG) per image into DIR")
    add_device(parser, "auto")
    add_batch_size(parser, "images per forward pass", 16)
    add_workers(parser, "threads that read and decode the images; 0: the main thread", 0)
    parser.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    add_amp(parser)
    parser.add_argument(
        "--viz-max-side",
        type=int,
        default=1024,
        metavar="PIXELS",
        help="attention pictures of images larger than this are drawn reduced to it (default 1024; 0: never)",
    )


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[tuple[Path, str | None]]:
    """Files and folders -> ``[(path, error or None)]``; folders give their image files, sorted.

    A path that does not exist, or a folder without images, is kept with its error so it is reported in order.
    """
    out: list[tuple[Path, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                out.append((path, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder"))
            out += [(p, None) for p in files]
        elif path.is_file():
            out.append((path, None))
        elif path.exists():  # a FIFO or a device would block the read forever
            out.append((path, "not a regular file"))
        else:
            out.append((path, "file not found"))
    return out


def viz_names(paths: list[Path]) -> list[str]:
    """One unique PNG file name per input: ``<stem>.png``, then ``<stem>-2.png``, ... for repeated stems."""
    seen: dict[str, int] = {}
    taken: set[str] = set()
    names = []
    for path in paths:
        stem = path.stem or "image"
        count = seen.get(stem, 0)
        name = f"{stem}.png"
        while name in taken:
            count += 1
            name = f"{stem}-{count + 1}.png"
        seen[stem] = count
        taken.add(name)
        names.append(name)
    return names


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def save_beside(image, path: Path, taken: set[str]) -> Path:
    """Write ``image`` as a PNG at ``path``, or beside it (``<stem>-2.png``, ...) when a file is there: an attention
    picture never replaces a file, not even an input in the same folder. Returns where it went."""
    while True:
        target = free_path(path, taken)
        taken.add(target.name)
        try:
            with open(target, "xb") as f:  # exclusive: a file made since the check is not replaced either
                try:
                    image.save(f, format="PNG")
                except BaseException:
                    f.close()
                    target.unlink(missing_ok=True)
                    raise
        except FileExistsError:
            continue
        return target


class _Table:
    """Fixed-width rows, printed as they come: file, fused top-1, each scale's top-1. Names and files are printed
    with control characters escaped (a class name from someone else's checkpoint may hold terminal escapes)."""

    def __init__(self, files: list[str], class_names: list[str], num_scales: int, answer: str = "fused") -> None:
        files, class_names = [printable(f) for f in files], [printable(n) for n in class_names]
        self.file_width = max([len("file")] + [len(f) for f in files])
        self.name_width = min(MAX_NAME_WIDTH, max(len(n) for n in class_names))
        heads = ["fused" if answer == "fused" else "mean of scales"] + [f"scale {s + 1}" for s in range(num_scales)]
        print(self._row("file", heads))

    def _row(self, file: str, cells: list[str]) -> str:
        width = self.name_width + 7  # name, a space, the probability as 0.123
        return f"{file:<{self.file_width}}  " + "  ".join(f"{c:<{width}}" for c in cells).rstrip()

    def add(self, file: str, prediction) -> None:
        tops = [prediction.top] + [scores[0] for scores in prediction.scales]
        cells = [f"{_cut(printable(t.name), self.name_width)} {t.prob:.3f}" for t in tops]
        print(self._row(printable(file), cells), flush=True)


def main(args: argparse.Namespace) -> int:
    from racnn.checkpoint import CheckpointError
    from racnn.inference.api import load

    if args.topk < 1 or args.batch_size < 1:
        print("error: --topk and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.viz_max_side < 0:
        return fail("", f"--viz-max-side must be 0 (never reduce) or a number of pixels, got {args.viz_max_side}")
    viz_dir = Path(args.save_viz) if args.save_viz else None
    try:
        if viz_dir is not None:
            writable_folder(viz_dir, "--save-viz")
        device = resolve_device(args.device)
    except OutputError as e:
        return fail("", e)
    except (ConfigError, RuntimeError) as e:  # torch.device("gpu") raises RuntimeError
        return fail("", f"--device {args.device}: {str(e).splitlines()[0]}")
    try:
        predictor = load(args.checkpoint, device=device, amp=args.amp)
    except (CheckpointError, ConfigError) as e:
        return fail("", e)
    log.info(printable(f"{predictor.source}: {predictor.precision.describe()}"))
    try:
        return _predict(args, predictor, viz_dir)
    except OSError as e:  # the attention pictures could not be written (no permission, disk full)
        return fail_os("", e)


def _predict(args: argparse.Namespace, predictor, viz_dir: Path | None) -> int:
    from racnn.data.io import ImageLoadError, load_image

    entries = expand_inputs(args.inputs, recursive=args.recursive)
    names = viz_names([path for path, _ in entries])
    taken: set[str] = set()
    beside: list[tuple[str, str]] = []  # (name asked for, name written) when a file was already there
    if viz_dir is not None:
        viz_dir.mkdir(parents=True, exist_ok=True)
    table = None
    if not args.json:
        num_scales = predictor.config.model.num_scales
        table = _Table([str(p) for p, _ in entries], predictor.class_names, num_scales, predictor.answer)

    failed = 0

    def report_error(path: Path, reason: str) -> None:
        nonlocal failed
        failed += 1
        print(f"error: {printable(path)}: {printable(reason)}", file=sys.stderr)
        if args.json:
            print(json.dumps({"file": str(path), "error": reason}), flush=True)

    def read(entry: tuple[Path, str | None]) -> tuple[object | None, str | None]:
        """``(image, None)`` or ``(None, why it could not be read)``."""
        path, error = entry
        if error is not None:
            return None, error
        try:
            return load_image(path), None
        except ImageLoadError as e:
            return None, e.reason

    # Load and classify batch_size files at a time (reading with --workers threads), reporting in input order.
    pool = ThreadPoolExecutor(args.workers) if args.workers > 0 else None
    try:
        for start in range(0, len(entries), args.batch_size):
            chunk = entries[start : start + args.batch_size]
            loaded = list(pool.map(read, chunk) if pool is not None else map(read, chunk))
            images = {i: image for i, (image, _) in enumerate(loaded) if image is not None}
            found = predictor.predict(list(images.values()), topk=args.topk, return_crops=viz_dir is not None)
            predictions = dict(zip(images, found, strict=True))
            for i, (path, _) in enumerate(chunk):
                if loaded[i][1] is not None:
                    report_error(path, loaded[i][1])
                    continue
                prediction = predictions[i]
                prediction.source = str(path)
                record = prediction.to_dict()
                if viz_dir is not None:
                    picture = predictor.draw(images[i], prediction, args.viz_max_side or None)
                    viz_path = save_beside(picture, viz_dir / names[start + i], taken)
                    if viz_path.name != names[start + i]:
                        beside.append((names[start + i], viz_path.name))
                    record["viz"] = str(viz_path)
                if args.json:
                    print(json.dumps(record), flush=True)
                else:
                    table.add(str(path), prediction)
    finally:
        if pool is not None:
            pool.shutdown()

    if beside:
        shown = ", ".join(f"{a} -> {b}" for a, b in beside[:3]) + (", ..." if len(beside) > 3 else "")
        log.warning(
            printable(
                f"note: {len(beside)} attention picture(s) written beside files already in {viz_dir} ({shown}); "
                "nothing was replaced"
            )
        )
    if failed:
        print(f"{failed} of {len(entries)} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
