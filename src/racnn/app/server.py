"""The web app of ``racnn app``: the page, ``POST /predict`` and ``GET /health`` over one shared inference queue.

Owns the HTTP side: statuses and JSON error bodies, per-file answers, serving the page from package data
(``racnn/app/static``), and running uvicorn on a socket behind the guards of :mod:`racnn.app.guards` (header
timeout, connection cap, ``Host`` allow-list, cross-origin posts). Reading uploads is :mod:`racnn.app.uploads`.
Imports starlette and uvicorn (the ``app`` extra) at module level, so only ``racnn.app.main``, the tests and the
benchmark import it; the model side lives in :mod:`racnn.app.inference`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from racnn.app.guards import Access, guarded_protocol
from racnn.app.inference import Busy, ImageError, InferenceQueue, decode_image
from racnn.app.uploads import RequestError, Upload, UploadMemory, parse_multipart, read_body, split_upload
from racnn.inference.api import Prediction, Predictor, PreparedImage
from racnn.pictures.visualize import SCALE_COLORS

__all__ = [
    "Access",
    "BackgroundServer",
    "Limits",
    "RequestError",
    "Upload",
    "bind",
    "create_app",
    "parse_multipart",
    "serve",
]

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
        max_requests: ``/predict`` requests decoding, waiting for or running on the model at once; more are
            answered ``503`` busy (before their upload is read when the server is already full). A request takes
            its place only once its whole body has arrived, so slow uploads never hold one.
        decode_threads: uploads parsed, decoded and preprocessed at once (worker threads, off the event loop).
        max_parts: the most parts (files and plain fields) of one multipart body.
        header_timeout: seconds a connection may take to send a request's line and headers.
        body_timeout: seconds a ``/predict`` body may take to arrive after its headers (then ``408``), and seconds a
            client may leave an answer unread once the send buffer is full (then the connection is dropped).
        max_connections: open connections at most; one more displaces the one that has waited longest for its
            headers (:func:`racnn.app.guards.guarded_protocol`), so ``/health`` and the page stay answerable.
    """

    max_bytes: int = 20 * 2**20
    max_files: int = 8
    max_pixels: int = 40_000_000
    max_requests: int = 32
    decode_threads: int = 2
    max_parts: int = 64
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 256

    @property
    def upload_memory(self) -> int:
        """Bytes of uploads held at once by all requests together: ``max_requests * max_bytes``."""
        return self.max_requests * self.max_bytes

    def to_dict(self) -> dict[str, float]:
        return {
            "max_mb": self.max_bytes / 2**20,
            "max_files": self.max_files,
            "max_megapixels": self.max_pixels / 1e6,
            "max_requests": self.max_requests,
            "max_parts": self.max_parts,
            "header_timeout_s": self.header_timeout,
            "body_timeout_s": self.body_timeout,
            "max_connections": self.max_connections,
        }


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


def _error(status: int, message: str, *, close: bool = False, **extra: Any) -> JSONResponse:
    """A JSON error; ``close``: end the connection after it (an upload answered before it was read whole)."""
    headers = {"Retry-After": "1"} if status == 503 else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _static_files() -> dict[str, bytes]:
    folder = importlib.resources.files("racnn.app") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


class _Guarded:
    """ASGI middleware: answers a request that :meth:`Access.refusal` refuses with its status, before any route."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.access.refusal(scope["method"], Request(scope).headers)
            if refusal is not None:
                await _error(*refusal, close=scope["method"] not in ("GET", "HEAD"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    predictor: Predictor,
    limits: Limits | None = None,
    *,
    topk: int = 5,
    batch_size: int = 16,
    name: str | None = None,
    access: Access | None = None,
) -> Starlette:
    """The ASGI app: ``GET /`` the page, ``POST /predict``, ``GET /health``, ``GET /static/<file>``.

    The inference worker starts and stops with the app's lifespan (uvicorn runs it).

    Args:
        predictor: the one model every request shares.
        limits: what one client may ask; default :class:`Limits`.
        topk: classes reported per scale and fusion head.
        batch_size: the most images per forward pass.
        name: what the page calls the model (e.g. the checkpoint's file name).
        access: which requests are answered (``Host`` names, cross-origin posts); default
            :class:`racnn.app.guards.Access` (loopback names only).
    """
    limits = limits or Limits()
    access = access or Access()
    inference = InferenceQueue(
        predictor, topk=topk, max_batch=batch_size, max_pending=limits.max_requests * limits.max_files
    )
    static = _static_files()
    in_flight = 0  # /predict requests past reading their body; the event loop is one thread, so a plain int is safe
    memory = UploadMemory(limits.upload_memory)
    workers: anyio.CapacityLimiter | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal workers
        workers = anyio.CapacityLimiter(limits.decode_threads)
        inference.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(inference.close)

    def prepare(upload: Upload) -> PreparedImage | str:
        """Decode and preprocess one upload (in a worker thread), or say why not."""
        try:
            image = decode_image(upload.data, limits.max_pixels)
            return dataclasses.replace(predictor.prepare(image), source=upload.name)
        except (ImageError, ValueError) as error:  # ValueError: e.g. sides too far apart for the model
            return str(error).splitlines()[0]
        except Exception as error:  # this file's failure, not the request's
            log.exception("preparing an upload failed")
            return f"internal error while reading the image: {type(error).__name__}"

    async def classify(request: Request, body: bytes) -> Response:
        crops = request.query_params.get("crops", "").lower() in ("1", "true", "yes")
        content_type, filename = request.headers.get("content-type", ""), request.query_params.get("filename")
        uploads = await anyio.to_thread.run_sync(  # a body of many parts is a scan of megabytes: off the loop
            lambda: split_upload(body, content_type, filename, limits.max_files, limits.max_parts), limiter=workers
        )
        prepared = await asyncio.gather(*(anyio.to_thread.run_sync(prepare, u, limiter=workers) for u in uploads))
        images = [item for item in prepared if isinstance(item, PreparedImage)]
        try:
            futures = inference.submit(images, crops=crops)
        except Busy as error:
            raise RequestError(503, str(error)) from None
        answers = iter(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True))
        failures = 0  # files the model failed on: the server's fault, not the file's

        def record(upload: Upload, item: PreparedImage | str) -> dict[str, Any]:
            nonlocal failures
            if not isinstance(item, PreparedImage):
                return {"file": upload.name, "error": item}
            answer = next(answers)
            if isinstance(answer, Busy):
                raise answer
            if isinstance(answer, BaseException):
                failures += 1
                log.error("classifying %r failed: %s: %s", upload.name, type(answer).__name__, answer)
                return {"file": upload.name, "error": f"internal error: {type(answer).__name__}: {answer}"}
            return prediction_record(answer, crops)

        results = await anyio.to_thread.run_sync(  # PNG encoding of the crops: off the event loop
            lambda: [record(u, item) for u, item in zip(uploads, prepared, strict=True)]
        )
        if failures and failures == len(images):
            return _error(500, results[0]["error"] if len(results) == 1 else "internal error", results=results)
        if all("error" in r for r in results):
            first = next(r["error"] for r in results)
            return _error(422, f"no image could be read: {first}", results=results)
        return JSONResponse({"results": results})

    async def predict(request: Request) -> Response:
        nonlocal in_flight
        if in_flight >= limits.max_requests:  # full: say so before reading the upload
            return _error(503, f"busy: {in_flight} requests in progress; try again shortly", close=True)
        body = None
        try:
            body = await read_body(request, limits.max_bytes, limits.body_timeout, memory)
            if in_flight >= limits.max_requests:
                raise RequestError(503, f"busy: {in_flight} requests in progress; try again shortly")
            in_flight += 1
            try:
                return await classify(request, body)
            finally:
                in_flight -= 1
        except RequestError as error:
            return _error(error.status, error.message, close=body is None)
        except Busy as error:  # closed while this request waited
            return _error(503, str(error))
        except ClientDisconnect:  # nobody to answer; not a server error
            return _error(400, "the client went away during the upload")
        except Exception as error:  # answer, log, stay up
            log.exception("POST /predict failed")
            return _error(500, f"internal error: {type(error).__name__}: {error}")
        finally:
            memory.release(len(body or b""))

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
        middleware=[Middleware(_Guarded, access=access)],
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
    limits: Limits = app.state.limits
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        # The connection guards replace uvicorn's limit_concurrency, which answers 503 to /health and the page too.
        http=guarded_protocol(limits.header_timeout, limits.max_connections, limits.body_timeout),
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
