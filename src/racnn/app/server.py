"""The web app of ``racnn app``: the page, ``POST /predict`` and ``GET /health`` over one shared inference queue.

Owns the HTTP side: reading an upload within its limits, splitting ``multipart/form-data``, statuses and JSON
error bodies, serving the page from package data (``racnn/app/static``), and running uvicorn on a socket.
Imports starlette and uvicorn (the ``app`` extra) at module level, so only ``racnn.app.main``, the tests and the
benchmark import it; the model side lives in :mod:`racnn.app.inference`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.message
import importlib.resources
import io
import logging
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from racnn.app.inference import Busy, ImageError, InferenceQueue, decode_image
from racnn.inference.api import Prediction, Predictor, PreparedImage
from racnn.pictures.visualize import SCALE_COLORS

__all__ = ["BackgroundServer", "Limits", "RequestError", "Upload", "bind", "create_app", "parse_multipart", "serve"]

log = logging.getLogger("racnn.app")

STATIC = {  # file -> media type; nothing else under /static is served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; the browser enforces it. Crops arrive as data: URLs, photos as blob: URLs.
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'none'"


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server.

    Attributes:
        max_bytes: the most bytes one ``POST /predict`` may upload (all its files together).
        max_files: the most files one request may hold.
        max_pixels: the most pixels (width x height) of one image.
        max_requests: ``/predict`` requests in progress at once (reading, waiting or running); more are answered
            ``503`` busy before their upload is read. Bounds memory at about ``max_requests * max_bytes``.
        decode_threads: images decoded and preprocessed at once.
    """

    max_bytes: int = 20 * 2**20
    max_files: int = 8
    max_pixels: int = 40_000_000
    max_requests: int = 32
    decode_threads: int = 2

    def to_dict(self) -> dict[str, float]:
        return {
            "max_mb": self.max_bytes / 2**20,
            "max_files": self.max_files,
            "max_megapixels": self.max_pixels / 1e6,
            "max_requests": self.max_requests,
        }


class RequestError(Exception):
    """A request the server will not serve: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name as the client gave it (``None`` for a raw body without one) and its bytes."""

    name: str | None
    data: bytes


def _header_params(name: str, value: str) -> email.message.Message:
    """A header parsed as email does: ``get_param`` undoes quoting and RFC 2231 encoding."""
    message = email.message.Message()
    message[name] = value
    return message


def parse_multipart(body: bytes, content_type: str) -> list[Upload]:
    """The file parts of a ``multipart/form-data`` body (RFC 7578), in order; plain form fields are skipped.

    Args:
        body: the whole request body (already size-checked).
        content_type: the request's ``Content-Type`` header, which carries the boundary.

    Raises:
        RequestError: 400 for a missing boundary or a malformed body.
    """
    boundary = _header_params("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(400, "multipart/form-data without a boundary")
    # Every delimiter is CRLF "--" boundary, except the first, which may start the body: give it a CRLF too.
    parts = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(parts) < 2 or not parts[-1].startswith(b"--"):
        raise RequestError(400, "malformed multipart/form-data: no closing boundary")
    uploads = []
    for part in parts[1:-1]:  # parts[0] is the preamble, parts[-1] the epilogue after the closing "--"
        head, separator, content = part.lstrip(b" \t").partition(b"\r\n\r\n")
        if not separator or not head.startswith(b"\r\n"):
            raise RequestError(400, "malformed multipart/form-data: a part without its header block")
        headers = {}
        for line in head.decode("utf-8", errors="replace").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
        keys = {key.lower() for key, _ in disposition.get_params(header="content-disposition") or []}
        if "filename" in keys or "filename*" in keys:
            uploads.append(Upload(disposition.get_filename() or None, content))
    return uploads


def split_upload(request: Request, body: bytes, max_files: int) -> list[Upload]:
    """The files of a ``/predict`` request: multipart file fields, or the raw body as one image.

    Raises:
        RequestError: an empty request, no file in it, more than ``max_files``, or a body that is neither.
    """
    hint = "send images as multipart/form-data file fields (curl -F file=@bird.jpg) or one image as the raw body"
    if not body:
        raise RequestError(400, f"empty request: {hint}")
    content_type = request.headers.get("content-type", "")
    mime = content_type.partition(";")[0].strip().lower()
    if mime == "multipart/form-data":
        uploads = parse_multipart(body, content_type)
    elif mime in ("", "application/octet-stream") or mime.startswith("image/"):
        uploads = [Upload(request.query_params.get("filename"), body)]
    else:
        raise RequestError(415, f"cannot read a {mime} body: {hint}")
    if not uploads:
        raise RequestError(400, f"no file in the request: {hint}")
    if len(uploads) > max_files:
        raise RequestError(400, f"too many files: {len(uploads)} in one request, at most {max_files}")
    return uploads


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes`` (before reading, when
    ``Content-Length`` says so)."""
    limit = f"the limit of {max_bytes / 2**20:g} MB per request"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"bad Content-Length header: {declared!r}")
        if int(declared) > max_bytes:
            raise RequestError(413, f"upload of {int(declared) / 2**20:.1f} MB is over {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"upload is over {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prediction_record(prediction: Prediction, crops: bool) -> dict[str, Any]:
    """``racnn predict --json``'s object for one image; with ``crops``, also ``"crops"``: each zoomed scale's
    input as a PNG data URL, keyed by scale like ``"boxes"``."""
    record = prediction.to_dict()
    if crops and prediction.crops is not None:
        record["crops"] = {str(s + 2): png_data_url(crop) for s, crop in enumerate(prediction.crops)}
    return record


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _static_files() -> dict[str, bytes]:
    folder = importlib.resources.files("racnn.app") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def create_app(
    predictor: Predictor,
    limits: Limits | None = None,
    *,
    topk: int = 5,
    batch_size: int = 16,
    name: str | None = None,
) -> Starlette:
    """The ASGI app: ``GET /`` the page, ``POST /predict``, ``GET /health``, ``GET /static/<file>``.

    The inference worker starts and stops with the app's lifespan (uvicorn runs it).

    Args:
        predictor: the one model every request shares.
        limits: what one client may ask; default :class:`Limits`.
        topk: classes reported per scale and fusion head.
        batch_size: the most images per forward pass.
        name: what the page calls the model (e.g. the checkpoint's file name).
    """
    limits = limits or Limits()
    inference = InferenceQueue(
        predictor, topk=topk, max_batch=batch_size, max_pending=limits.max_requests * limits.max_files
    )
    static = _static_files()
    in_flight = 0  # /predict requests in progress; the event loop is one thread, so a plain int is safe
    decoders: anyio.CapacityLimiter | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal decoders
        decoders = anyio.CapacityLimiter(limits.decode_threads)
        inference.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(inference.close)

    def prepare(upload: Upload) -> PreparedImage | str:
        """Decode and preprocess one upload (in a worker thread), or say why not."""
        try:
            image = decode_image(upload.data, limits.max_pixels)
        except ImageError as error:
            return str(error)
        return dataclasses.replace(predictor.prepare(image), source=upload.name)

    async def classify(request: Request) -> Response:
        crops = request.query_params.get("crops", "").lower() in ("1", "true", "yes")
        uploads = split_upload(request, await read_body(request, limits.max_bytes), limits.max_files)
        prepared = await asyncio.gather(*(anyio.to_thread.run_sync(prepare, u, limiter=decoders) for u in uploads))
        images = [item for item in prepared if isinstance(item, PreparedImage)]
        try:
            futures = inference.submit(images, crops=crops)
        except Busy as error:
            raise RequestError(503, str(error)) from None
        predictions = iter(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

        def records() -> list[dict[str, Any]]:
            return [
                prediction_record(next(predictions), crops)
                if isinstance(item, PreparedImage)
                else {"file": upload.name, "error": item}
                for upload, item in zip(uploads, prepared, strict=True)
            ]

        results = await anyio.to_thread.run_sync(records)  # PNG encoding of the crops: off the event loop
        if not images:
            first = next(r["error"] for r in results)
            return _error(422, f"no image could be read: {first}", results=results)
        return JSONResponse({"results": results})

    async def predict(request: Request) -> Response:
        nonlocal in_flight
        if in_flight >= limits.max_requests:
            return _error(503, f"busy: {in_flight} requests in progress; try again shortly")
        in_flight += 1
        try:
            return await classify(request)
        except RequestError as error:
            return _error(error.status, error.message)
        except Busy as error:  # closed while this request waited
            return _error(503, str(error))
        except ClientDisconnect:  # nobody to answer; not a server error
            return _error(400, "the client went away during the upload")
        except Exception as error:  # answer, log, stay up
            log.exception("POST /predict failed")
            return _error(500, f"internal error: {type(error).__name__}: {error}")
        finally:
            in_flight -= 1

    async def health(request: Request) -> Response:
        model = predictor.config.model
        return JSONResponse(
            {
                "status": "ok",
                "model": {
                    "name": name,
                    "backbone": model.backbone,
                    "num_classes": len(predictor.class_names),
                    "num_scales": model.num_scales,
                    "input_size": model.input_size,
                    "device": str(predictor.device),
                },
                "topk": inference.topk,
                "limits": limits.to_dict(),
                "queue": {
                    "in_flight": in_flight,
                    "pending": inference.pending,
                    "batches": inference.batches,
                    "images": inference.images,
                    "largest_batch": inference.largest_batch,
                },
                "scale_colors": {str(s + 2): "#{:02x}{:02x}{:02x}".format(*rgb) for s, rgb in enumerate(SCALE_COLORS)},
            }
        )

    def page_file(file: str) -> Response:
        if file not in STATIC:
            return _error(404, f"no such file: /static/{file}")
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if file == "index.html":
            headers["Content-Security-Policy"] = PAGE_POLICY
        return Response(static[file], media_type=STATIC[file], headers=headers)

    async def page(request: Request) -> Response:
        return page_file("index.html")

    async def static_file(request: Request) -> Response:
        return page_file(request.path_params["file"])

    async def http_error(request: Request, error: Exception) -> Response:  # 404, 405 as JSON
        status = error.status_code if isinstance(error, HTTPException) else 500
        return _error(status, str(getattr(error, "detail", "")) or "error")

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/static/{file}", static_file, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.inference = inference
    app.state.limits = limits
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port). Raises ``OSError`` when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not socket.create_server's 0: asyncio turns Nagle's algorithm off only on accepted sockets
    # whose proto says TCP, and with it on, every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Starlette, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        # A backstop for floods of idle connections; /predict answers "busy" itself long before.
        limit_concurrency=max(64, 4 * app.state.limits.max_requests),
        timeout_graceful_shutdown=10,
    )
    return uvicorn.Server(config)


def serve(app: Starlette, sock: socket.socket, *, log_level: str = "info") -> None:
    """Run ``app`` (from :func:`create_app`) on ``sock`` until Ctrl+C or SIGTERM."""
    _server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """``app`` served from a thread on a free local port, for tests, benchmarks and screenshots.

    >>> with BackgroundServer(create_app(predictor)) as server:  # doctest: +SKIP
    ...     urllib.request.urlopen(server.url + "/health")
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{self.port}"
        self._server = _server(app, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        for _ in range(300):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            self._thread.join(0.05)
        raise RuntimeError(f"the server did not start on {self.url}")

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self.sock.close()
