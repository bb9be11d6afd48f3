"""Headless Chromium driven over the Chrome DevTools Protocol, for the browser test and the README screenshot.

No pip package and no chromedriver: Chromium started with ``--remote-debugging-pipe`` reads JSON commands from
file descriptor 3 and writes replies and events to descriptor 4, each message ending in a NUL byte. This module
opens a page, sets files on an ``<input type=file>`` or drops them on the page (as a person choosing or dropping
photos does), evaluates JavaScript, waits for conditions and takes screenshots; that is all the tests need.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Run in the child: put the two pipe ends at descriptors 3 and 4, where Chromium looks for them, then become
# Chromium. (A shell cannot do it portably: dash's redirections take one-digit descriptors only.)
_AT_3_AND_4 = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)


def find_chromium() -> str | None:
    """``$RACNN_CHROMIUM``, else the first Chromium or Chrome on the PATH (Debian's ``chromium`` package)."""
    return os.environ.get("RACNN_CHROMIUM") or next(filter(None, map(shutil.which, CANDIDATES)), None)


class BrowserError(RuntimeError):
    pass


def _above_4(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class Chromium:
    """One headless Chromium process; :meth:`new_page` opens tabs. Use as a context manager.

    Args:
        binary: the Chromium executable.
        profile: a folder for the browser's profile (and its log, ``chromium.log``), made if missing.
        timeout: seconds to wait for any one reply.
    """

    def __init__(self, binary: str, profile: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        Path(profile).mkdir(parents=True, exist_ok=True)
        self.log = Path(profile) / "chromium.log"
        command_read, self._command_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        command_read, reply_write = _above_4(command_read), _above_4(reply_write)  # so dup2 to 3, 4 clobbers neither
        flags = [
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # containers (and root) often lack what the sandbox needs; the pages are our own
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        binary = shutil.which(binary) or binary
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _AT_3_AND_4, str(command_read), str(reply_write), binary, *flags],
                pass_fds=(command_read, reply_write),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(command_read)
        os.close(reply_write)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, name="chromium-reader", daemon=True)
        self._reader.start()
        try:
            self.version = self.call("Browser.getVersion")["product"]
        except (BrowserError, OSError):
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._reply_read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._arrived:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:  # events (no id) are not needed: the tests poll the page instead
                        self._replies[message["id"]] = message
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()  # Chromium exited: wake any caller waiting for a reply

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply's ``result``; raise :class:`BrowserError` for an error reply."""
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._command_write, data) :]
        deadline = time.monotonic() + self.timeout
        with self._arrived:
            while message_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    tail = self.log.read_text(errors="replace")[-1500:]
                    raise BrowserError(f"no reply to {method} from Chromium; its log ends:\n{tail}")
                self._arrived.wait(min(left, 0.5))
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    def new_page(self, width: int = 1200, height: int = 900) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False})  # fmt: skip
        return page

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._command_write)
        self._reader.join(5)
        os.close(self._reply_read)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Page:
    """One tab, attached with its own DevTools session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def goto(self, url: str) -> None:
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited); raise with the page's exception."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise BrowserError(f"{expression!r} raised: {details.get('exception', {}).get('description', details)}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until the expression is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {expression}")
            time.sleep(0.05)
        return value

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files on an ``<input type=file>``, as a person picking them does (``change`` fires)."""
        root = self.call("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r}")
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

    def drop_files(self, paths: list[Path], x: float = 100, y: float = 100) -> None:
        """Drag files from outside the browser and drop them at ``(x, y)``, as a person dropping photos does."""
        data = {"items": [], "files": [str(Path(p).resolve()) for p in paths], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.call("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})

    def screenshot(self, clip: dict[str, float] | None = None, full_page: bool = False) -> bytes:
        """A PNG of the viewport, of ``clip`` (``x, y, width, height`` in CSS pixels) or of the whole page."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, document.body.scrollHeight]")
            clip = {"x": 0, "y": 0, "width": width, "height": height}
            params["captureBeyondViewport"] = True
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
