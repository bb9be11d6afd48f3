"""Serve a checkpoint on a local web page: drop photos, see the fused answer, each scale's answer, the attention
boxes and the zoomed regions.

The page and programs use the same endpoints: POST /predict (multipart/form-data file fields, or one image as
the raw body; answers {"results": [...]} with one `racnn predict --json` object per file), GET /health. One
model serves every client: a worker thread batches the queued images; when --queue requests are in progress,
more are answered 503 "busy". Nothing is written to disk. Binds 127.0.0.1 unless --host says otherwise, and
answers only requests addressed to that host or a loopback name (--allow-host adds names, e.g. for a reverse
proxy); posts from pages of other origins are refused unless --allow-cross-origin.
Needs the app extra: pip install 'racnn[app]'.

Example:
  racnn app --checkpoint runs/cub                    # then open http://127.0.0.1:8000/
  curl -F file=@bird.jpg http://127.0.0.1:8000/predict
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from racnn.cli.flags import CHECKPOINT_HELP, add_amp, add_batch_size, add_device
from racnn.config import ConfigError, resolve_device

MISSING_EXTRA = "error: racnn app needs the web server of the app extra (starlette, uvicorn): pip install 'racnn[app]'"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    add_device(parser, "auto")
    add_amp(parser)
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="classes reported per scale (default 5)")
    parser.add_argument("--max-mb", type=float, default=20.0, help="upload limit per request, MB (default 20)")
    parser.add_argument("--max-files", type=int, default=8, metavar="N", help="files per request (default 8)")
    parser.add_argument(
        "--max-megapixels", type=float, default=40.0, metavar="MPX", help="pixels per image, millions (default 40)"
    )
    parser.add_argument(
        "--queue", type=int, default=32, metavar="N", help="requests in progress at once; more get 503 (default 32)"
    )
    add_batch_size(parser, "images per forward pass", 16)
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host is NAME (repeatable; '*': any), e.g. the name a reverse proxy uses "
        "(default: the --host address and localhost names only)",
    )
    parser.add_argument(
        "--allow-cross-origin",
        action="store_true",
        help="also run POST /predict sent by pages of other origins (default: refused with 403)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to send a request's headers (default 10)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to send an upload, or to leave an answer unread (default 60)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="open connections; one more closes the one idle longest (default 256)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="server log on stderr; info logs every request (default info)",
    )


# flag -> (its value's attribute, the largest value that makes sense): counts, sizes and seconds a server takes.
NUMBERS = {
    "--topk": ("topk", 10**6),
    "--max-mb": ("max_mb", 2**20),  # 1 TB
    "--max-files": ("max_files", 10**6),
    "--max-megapixels": ("max_megapixels", 10**6),
    "--queue": ("queue", 10**6),
    "--batch-size": ("batch_size", 4096),
    "--header-timeout": ("header_timeout", 86400),
    "--body-timeout": ("body_timeout", 86400),
    "--max-connections": ("max_connections", 10**6),
}


def _bad_numbers(args: argparse.Namespace) -> list[str]:
    """One phrase per numeric option out of its range (positive, finite, at most its ceiling)."""
    bad = []
    for flag, (attribute, ceiling) in NUMBERS.items():
        value = getattr(args, attribute)
        if not 0 < value <= ceiling:  # also false for NaN
            bad.append(f"{flag} {value}: must be positive and at most {ceiling:,}")
    return bad


def main(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from racnn.app.server import Access, Limits, bind, create_app, serve
    from racnn.checkpoint import CheckpointError
    from racnn.inference.api import load

    bad = _bad_numbers(args)
    if bad:
        print(f"error: {', '.join(bad)}", file=sys.stderr)
        return 2
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port}: must be 0-65535 (0: any free port)", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as e:  # torch.device("gpu") raises RuntimeError
        print(f"error: --device {args.device}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        predictor = load(args.checkpoint, device=device, amp=args.amp)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2

    limits = Limits(
        max_bytes=int(args.max_mb * 2**20),
        max_files=args.max_files,
        max_pixels=int(args.max_megapixels * 1e6),
        max_requests=args.queue,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
    )
    access = Access.for_bind(args.host, args.allow_host, cross_origin=args.allow_cross_origin)
    name = Path(predictor.source or args.checkpoint).name
    app = create_app(predictor, limits, topk=args.topk, batch_size=args.batch_size, name=name, access=access)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    model = f"{name} ({predictor.config.model.backbone}, {len(predictor.class_names)} classes)"
    print(f"racnn app: {model} on {device}, {predictor.precision.describe()}")
    print(f"open http://{url_host}:{port}/  (Ctrl+C stops)", flush=True)
    if args.host not in LOOPBACK:
        print(f"note: listening on {args.host}: anyone who can reach this machine can use the model", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down gracefully on Ctrl+C, then re-raises it
        serve(app, sock, log_level=args.log_level)
    print("racnn app: stopped")
    return 0
