"""What reaches the app of ``racnn app`` before a handler runs: the connection guard and the request guard.

- :func:`guarded_protocol`: uvicorn's h11 connection with three more rules. A connection must deliver a request's
  line and headers within ``header_timeout`` seconds of starting to wait for them (a half-sent header is closed,
  not kept), and at most ``max_connections`` are open: one more displaces the connection that has waited longest
  for its headers (idle or half-sent), so a flood of slow sockets cannot keep ``/health`` and the page from
  answering. Only when every connection is inside a request is the new one answered 503. A client that leaves an
  answer unread for ``write_timeout`` seconds once the send buffer is full is dropped.
- :class:`Access`: which requests are this server's. The ``Host`` header must name the host the server binds
  (or a loopback name, or one allowed for a reverse proxy), so a page on another name cannot reach the model
  through DNS rebinding; and a form post from another origin (``Origin`` / ``Sec-Fetch-Site``), which browsers
  send without asking, is refused unless allowed.

Imports uvicorn and h11 (the ``app`` extra) at module level; only :mod:`racnn.app.server` imports this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["LOOPBACK_NAMES", "Access", "guarded_protocol"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
_BUSY_BODY = b'{"error": "busy: too many connections; try again shortly"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def guarded_protocol(header_timeout: float, max_connections: int, write_timeout: float = 60.0) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with a header timeout, a connection cap and a write
    timeout.

    Args:
        header_timeout: seconds a connection may take to send a request's line and headers, counted from its
            start or from the end of the previous response.
        max_connections: open connections at most; see the module docstring for who gives way.
        write_timeout: seconds a client may leave an answer unread once the server's send buffer is full; then the
            connection is dropped (its handler was waiting to write, holding the connection for ever).
    """
    if not header_timeout > 0 or max_connections < 1 or not write_timeout > 0:
        raise ValueError(f"timeouts and max_connections must be positive: {header_timeout}, {max_connections}")

    class GuardedH11Protocol(H11Protocol):
        waiting_since: float | None = None  # monotonic time it began waiting for headers; None inside a request
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:  # the send buffer is full: the client is not reading
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout, self.transport.abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_headers()
            if len(self.connections) > max_connections:
                waiting = [c for c in self.connections if c is not self and c.waiting_since is not None]
                if waiting:
                    min(waiting, key=lambda c: c.waiting_since).transport.close()
                else:  # every other connection is inside a request: this one gives way
                    transport.write(_BUSY)
                    transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            if self._write_timer is not None:
                self._write_timer.cancel()
            self.waiting_since = None
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the headers arrived (or the connection failed)
                self._stop_timer()
                self.waiting_since = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._wait_for_headers()

        def _wait_for_headers(self) -> None:
            self._stop_timer()
            self.waiting_since = time.monotonic()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def _host_name(value: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, lower case, without port, brackets or a final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    """Which requests the server answers.

    Attributes:
        hosts: names a request's ``Host`` may carry (the port is not compared); ``"*"`` allows any.
            ``*.localhost`` is always allowed (browsers resolve it to this machine only).
        any_ip: also allow any IP address as ``Host`` (a wildcard bind: clients reach it by any of its addresses;
            DNS rebinding needs a name, never an address).
        cross_origin: also run ``POST``s that a page of another origin sent.
    """

    hosts: tuple[str, ...] = LOOPBACK_NAMES
    any_ip: bool = False
    cross_origin: bool = False

    @classmethod
    def for_bind(cls, host: str, allow_hosts: Iterable[str] = (), cross_origin: bool = False) -> Access:
        """The default for a server bound to ``host``: that host and the loopback names, plus ``allow_hosts``;
        a wildcard bind (``0.0.0.0``, ``::``) also allows any IP address and this machine's name."""
        names = [*LOOPBACK_NAMES, _host_name(host), *(_host_name(h) if h != "*" else h for h in allow_hosts)]
        wildcard = host in WILDCARDS
        if wildcard:
            names.append(socket.gethostname().lower())
        return cls(tuple(dict.fromkeys(n for n in names if n)), any_ip=wildcard, cross_origin=cross_origin)

    def host_allowed(self, header: str) -> bool:
        name = _host_name(header)
        if not name:
            return False
        return "*" in self.hosts or name in self.hosts or name.endswith(".localhost") or (self.any_ip and _is_ip(name))

    def refusal(self, method: str, headers: Any) -> tuple[int, str] | None:
        """``(status, message)`` when the request is not this server's to answer, else None.

        Args:
            method: the HTTP method.
            headers: the request's headers (a mapping with case-insensitive ``get``, as starlette's).
        """
        host = headers.get("host", "")
        if not self.host_allowed(host):
            shown = repr(host[:100]) if host else "none"
            return 400, (
                f"Host {shown} is not a name of this server; allowed: {', '.join(self.hosts)} "
                "(racnn app --allow-host NAME adds one, e.g. behind a reverse proxy)"
            )
        if self.cross_origin or method in ("GET", "HEAD", "OPTIONS"):
            return None
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if site is not None:  # set by the browser, never by a page: it holds behind a proxy that rewrites Host too
            foreign = site.strip().lower() not in ("same-origin", "none")
        elif origin is not None:  # browsers without Sec-Fetch-*: the page's origin against the address asked for
            page = origin.strip().lower()
            foreign = page == "null" or urlsplit(page).netloc != host.strip().lower()
        else:  # not a browser's cross-site request (curl, programs)
            foreign = False
        if foreign:
            shown = repr(origin[:100]) if origin is not None else f"Sec-Fetch-Site {site!r}"
            return 403, (
                f"cross-origin request refused (from {shown}): this server answers its own page and programs; "
                "racnn app --allow-cross-origin allows other pages"
            )
        return None
