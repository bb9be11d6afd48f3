"""Reading the uploads of ``POST /predict``: the body within its size and time limits and the server's upload
memory, and the files in it (``multipart/form-data`` parts, or the raw body as one image).

Owns :class:`RequestError` (a status and a one-line message), :class:`Upload`, :class:`UploadMemory`,
:func:`read_body`, :func:`parse_multipart` and :func:`split_upload`. The parsing functions are plain, blocking
code over bytes: the server runs them in a worker thread, never on the event loop. Imports starlette's
``Request`` (the ``app`` extra) for typing and reading only; only :mod:`racnn.app.server` imports this.
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass

import anyio
from starlette.requests import Request

__all__ = ["RequestError", "Upload", "UploadMemory", "parse_multipart", "read_body", "split_upload"]

HINT = "send images as multipart/form-data file fields (curl -F file=@bird.jpg) or one image as the raw body"


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


class UploadMemory:
    """Bytes of uploads held at once by every request together (being read, decoded or waiting), at most
    ``budget``. The event loop is one thread, so plain integers are safe."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise a 503 :class:`RequestError` when the budget is spent."""
        if self.held + size > self.budget:
            raise RequestError(503, f"busy: {self.held / 2**20:.0f} MB of uploads are being handled; try again shortly")
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


async def read_body(request: Request, max_bytes: int, timeout: float, memory: UploadMemory) -> bytes:
    """The request body, held in ``memory`` (the caller releases ``len(body)``).

    Refused with 413 as soon as it is known to exceed ``max_bytes`` (before reading, when ``Content-Length`` says
    so), with 408 when it has not arrived ``timeout`` seconds after the headers, with 503 when the server's upload
    memory is spent. On a refusal the bytes read so far are released here.
    """
    limit = f"the limit of {max_bytes / 2**20:g} MB per request"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise RequestError(400, f"bad Content-Length header: {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise RequestError(413, f"upload of {int(declared) / 2**20:.1f} MB is over {limit}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                if size + len(chunk) > max_bytes:
                    raise RequestError(413, f"upload is over {limit}")
                memory.take(len(chunk))
                size += len(chunk)
                chunks.append(chunk)
    except TimeoutError:
        memory.release(size)
        raise RequestError(408, f"the upload did not arrive within {timeout:g} s") from None
    except BaseException:
        memory.release(size)
        raise
    return b"".join(chunks)


def _header_params(name: str, value: str) -> email.message.Message:
    """A header parsed as email does: ``get_param`` undoes quoting and RFC 2231 encoding."""
    message = email.message.Message()
    message[name] = value
    return message


def parse_multipart(body: bytes, content_type: str, max_parts: int = 64) -> list[Upload]:
    """The file parts of a ``multipart/form-data`` body (RFC 7578), in order; plain form fields are skipped.

    Args:
        body: the whole request body (already size-checked).
        content_type: the request's ``Content-Type`` header, which carries the boundary.
        max_parts: the most parts (files and fields) accepted; counted before any part is split off, so a body of
            400,000 empty fields costs one scan.

    Raises:
        RequestError: 400 for a missing boundary, a malformed body or more than ``max_parts`` parts.
    """
    boundary = _header_params("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise RequestError(400, "multipart/form-data without a boundary (or one over 200 characters)")
    # Every delimiter is CRLF "--" boundary, except the first, which may start the body: give it a CRLF too.
    body = b"\r\n" + body
    delimiter = b"\r\n--" + boundary.encode("latin-1", errors="replace")
    num_parts = body.count(delimiter) - 1  # the last delimiter closes the body
    if num_parts > max_parts:
        raise RequestError(400, f"too many parts: {num_parts} in one multipart body, at most {max_parts}")
    parts = body.split(delimiter)
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


def split_upload(
    body: bytes, content_type: str, filename: str | None, max_files: int, max_parts: int = 64
) -> list[Upload]:
    """The files of a ``/predict`` request: multipart file fields, or the raw body as one image.

    Args:
        body: the whole body.
        content_type: its ``Content-Type`` header ("" when none).
        filename: the name a raw body goes by (``?filename=``).
        max_files: the most files accepted.
        max_parts: the most multipart parts accepted (:func:`parse_multipart`).

    Raises:
        RequestError: an empty request, no file in it, more than ``max_files``, or a body that is neither.
    """
    if not body:
        raise RequestError(400, f"empty request: {HINT}")
    mime = content_type.partition(";")[0].strip().lower()
    if mime == "multipart/form-data":
        uploads = parse_multipart(body, content_type, max_parts)
    elif mime in ("", "application/octet-stream") or mime.startswith("image/"):
        uploads = [Upload(filename, body)]
    else:
        raise RequestError(415, f"cannot read a {mime[:100]} body: {HINT}")
    if not uploads:
        raise RequestError(400, f"no file in the request: {HINT}")
    if len(uploads) > max_files:
        raise RequestError(400, f"too many files: {len(uploads)} in one request, at most {max_files}")
    return uploads
