"""uvicorn as every lakeloop HTTP server runs it (model server, webhook receiver, embedded lakeFS):
bounded request heads and slow clients cut off.

uvicorn's httptools protocol puts no limit on the size of a request line plus headers and no time
limit on receiving them: a client could send megabytes of headers, or one byte every few seconds,
and hold the connection forever. `BoundedHttpTools` answers 431 when the head passes
`max_header_bytes` and 408 when it is not complete within `header_timeout` seconds of the
connection (or of the request's first byte), then closes the connection. The app bounds the body
itself (size and time), since only it knows what a body may be.

It also tells the app how many requests the server is handling: `scope["extensions"]["lakeloop.requests"]`
is the server's set of request tasks (this one included, and those whose head has arrived but whose
app has not started yet), so a model server can tell a request that is alone from one with company.
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 16 * 1024  # what h11 and most proxies allow
HEADER_TIMEOUT_S = 10.0
REQUESTS = "lakeloop.requests"  # the scope extension holding the server's request tasks


class _HeadRefused(Exception):
    """Raised inside a parser callback: httptools stops and uvicorn calls send_400_response."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time bound on each request's head."""

    def __init__(self, *args, max_header_bytes: int = MAX_HEADER_BYTES, header_timeout: float = HEADER_TIMEOUT_S,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.header_timeout = max_header_bytes, header_timeout
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._extensions = {REQUESTS: self.tasks}  # the same for every request of the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refusal = (408, f"request head not complete within {self.header_timeout:g} s")
            self.send_400_response("")

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._refusal = (431, f"request line and headers larger than {self.max_header_bytes} bytes")
            raise _HeadRefused

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions
        self._head_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, text = self._refusal
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = text.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()


def options(max_header_bytes: int = MAX_HEADER_BYTES, header_timeout: float = HEADER_TIMEOUT_S) -> dict:
    """`uvicorn.run` keyword arguments for a bounded server."""
    protocol = functools.partial(BoundedHttpTools, max_header_bytes=max_header_bytes, header_timeout=header_timeout)
    return {"http": protocol, "h11_max_incomplete_event_size": max_header_bytes}
