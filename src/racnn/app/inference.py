"""Inference shared by many clients: decode untrusted image bytes safely, and one worker thread that batches the
queued images through one :class:`racnn.inference.api.Predictor`.

Owns the rules for uploaded bytes (accepted formats, the pixel limit, truncated files) and the bounded queue
between request handlers and the model. May import racnn.inference.api, racnn.data.io, PIL and torch; no web framework
(``racnn.app.server`` builds the HTTP side on this).
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from racnn.data.io import to_rgb  # the data layer's mode conversion, so an upload reads as `racnn predict` reads it
from racnn.inference.api import Prediction, Predictor, PreparedImage

__all__ = ["FORMATS", "Busy", "ImageError", "InferenceQueue", "decode_image"]

# What a browser or camera produces (JPEG includes the MPO files of some cameras). Everything else PIL could open
# is refused: some plugins (EPS) run external programs, and a web page has no use for the rest.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(ValueError):
    """Uploaded bytes that are not a usable image; ``str(error)`` is the one-line reason for the client."""


class Busy(RuntimeError):
    """The queue is full (or closing): the client should try again shortly."""


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into an 8-bit RGB image, refusing what is not a whole, reasonably sized image.

    The pixel count is checked from the header, before anything is decoded, so a decompression bomb (a small file
    of a huge image) costs nothing. The whole image is then decoded here, so a truncated file fails now.

    Args:
        data: the file's bytes.
        max_pixels: the most pixels (width x height) accepted.

    Returns:
        The image in mode ``RGB`` (converted from any mode as :func:`racnn.data.load_image` converts).

    Raises:
        ImageError: empty, not one of :data:`FORMATS`, over ``max_pixels``, truncated or corrupt.
    """
    if not data:
        raise ImageError("empty file")
    Image.init()  # register every plugin: open(formats=...) looks the names up without loading plugins itself
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF") from None
    except Image.DecompressionBombError as error:  # PIL's own guard, at twice Image.MAX_IMAGE_PIXELS
        raise ImageError(f"too many pixels: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt image header: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"image of {width} x {height} pixels is over the limit of {max_pixels / 1e6:g} megapixels")
        try:
            image.load()
            return to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageError(f"truncated or corrupt image: {error}") from None


@dataclass
class _Job:
    image: PreparedImage
    crops: bool
    future: Future  # Future[Prediction]


class InferenceQueue:
    """One worker thread runs every forward pass, so handlers never use the model concurrently.

    While the model works on a batch, new images wait; the next batch takes up to ``max_batch`` of them at once.
    No request waits for a batching window, and under load the batches grow by themselves.

    Args:
        predictor: the shared predictor.
        topk: classes reported per scale and fusion head.
        max_batch: the most images per forward pass.
        max_pending: the most images waiting; :meth:`submit` raises :class:`Busy` rather than queue more.

    Attributes:
        batches: forward passes run so far.
        images: images classified so far.
        largest_batch: the most images one forward pass has taken.
    """

    def __init__(self, predictor: Predictor, topk: int = 5, max_batch: int = 16, max_pending: int = 256) -> None:
        if topk < 1 or max_batch < 1 or max_pending < 1:
            raise ValueError(f"topk, max_batch and max_pending must be >= 1, got {topk}, {max_batch}, {max_pending}")
        self.predictor = predictor
        self.topk = topk
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="racnn-inference", daemon=True)

    @property
    def pending(self) -> int:
        """Images waiting for a forward pass."""
        with self._cond:
            return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new images, fail the waiting ones with :class:`Busy`, finish the batch under way."""
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Busy("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, images: Sequence[PreparedImage], crops: bool = False) -> list[Future]:
        """Queue images, all or none.

        Args:
            images: preprocessed images (:meth:`racnn.inference.api.Predictor.prepare`).
            crops: also return each zoomed scale's input (``Prediction.crops``).

        Returns:
            One ``concurrent.futures.Future`` per image, resolving to its :class:`racnn.inference.api.Prediction`.

        Raises:
            Busy: the queue has no room for all of them, or it is closed.
        """
        jobs = [_Job(image, crops, Future()) for image in images]
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._pending) + len(jobs) > self.max_pending:
                raise Busy(f"busy: {len(self._pending)} images are waiting for the model; try again shortly")
            self._pending.extend(jobs)
            self._cond.notify()
        return [job.future for job in jobs]

    def _take(self) -> list[_Job] | None:
        """The next batch (jobs whose client gave up are dropped), or ``None`` once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch = []
            while self._pending and len(batch) < self.max_batch:
                job = self._pending.popleft()
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            try:
                predictions: list[Prediction] = self.predictor.predict(
                    [job.image for job in batch],
                    topk=self.topk,
                    batch_size=len(batch),
                    return_crops=any(job.crops for job in batch),
                )
            except Exception as error:  # a failing batch fails its requests, not the server
                for job in batch:
                    job.future.set_exception(error)
                continue
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for job, prediction in zip(batch, predictions, strict=True):
                if not job.crops:
                    prediction.crops = prediction.region_crops = None
                job.future.set_result(prediction)
