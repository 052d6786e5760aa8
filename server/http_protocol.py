"""uvicorn's httptools protocol with the limits it lacks: the request head's size, the time a
head may take to arrive, and the number of open connections.

httptools (chosen over h11 for speed) has no header size limit of its own, and uvicorn arms no
timer until a connection has had a response: an endless URL or header value was read without
bound, and a connection that never finished its head was never closed. h11 bounds the head
(``h11_max_incomplete_event_size``) but answers 400, and has no head timeout either. So the
limits are enforced here, around the parser, and cost nothing once the head is in (a branch per
``data_received``; streaming a response never comes here):

- the request line and headers together at most ``max_head_bytes``: past it 414 (the URL alone
  is too long) or 431, and the connection is closed;
- the head within ``head_timeout`` seconds of the connection (or of the previous response): past
  it 408 and close; an idle keep-alive connection is closed after uvicorn's
  ``timeout_keep_alive``;
- at most ``max_connections`` open at once: one more is answered 503 and closed at once.

A refusal is written at once; the connection is closed after the client's remaining bytes have
been read and dropped (bounded: ``DISCARD_MAX_BYTES``, ``DISCARD_SECONDS``), so the client reads
the answer rather than a connection reset.
"""
from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("gptserve.server")
DISCARD_MAX_BYTES = 4 << 20
DISCARD_SECONDS = 1.0
REASONS = {408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def refusal_bytes(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response with an OpenAI error body, closing the connection."""
    kind = "overloaded" if status == 503 else "timeout" if status == 408 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Configured by ``limited_protocol``: one subclass per server, the limits as class attributes."""

    max_head_bytes = 16384
    head_timeout = 10.0
    max_connections: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._is_in_head = True
        self._num_head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._num_discarded = -1  # >= 0 once refused: the bytes dropped since
        self._pending: tuple[int, str, str] | None = None  # a refusal found inside a parser callback

    # ----- connection -----

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._refuse(503, f"The server has {self.max_connections} connections open, its limit; retry shortly.",
                         "too_many_connections")
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._num_discarded >= 0:  # refused: drop what the client still sends, then close
            self._num_discarded += len(data)
            if self._num_discarded > DISCARD_MAX_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        if not self._is_in_head or self.transport.is_closing():
            return
        self._num_head_bytes += len(data)
        if len(getattr(self, "url", b"")) > self.max_head_bytes:
            self._refuse(414, f"The request line is longer than {self.max_head_bytes} bytes.", "uri_too_long")
        elif self._num_head_bytes > self.max_head_bytes:
            self._refuse(431, f"The request's headers are larger than {self.max_head_bytes} bytes.",
                         "headers_too_large")

    # ----- parser callbacks -----

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._is_in_head = True
        self._num_head_bytes = 0
        if self._head_timer is None:
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._is_in_head = False
        self._cancel_head_timer()
        head_size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head_size > self.max_head_bytes:  # all of it came in one read: refused before the app sees it
            self._pending = (431, f"The request's headers are larger than {self.max_head_bytes} bytes.",
                             "headers_too_large")
            raise HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._pending is not None:
            self._refuse(*self._pending)
            return
        super().send_400_response(msg)

    # ----- timers and refusals -----

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._is_in_head:
            return
        if self._num_head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing sent at all: nothing to answer
            return
        self._refuse(408, f"The request's headers did not arrive within {self.head_timeout:g} s.", "header_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        client = "%s:%d" % self.client if self.client else "?"
        logger.warning("%s: %d %s", client, status, message)
        self.transport.write(refusal_bytes(status, message, code))
        self._num_discarded = 0
        self.loop.call_later(DISCARD_SECONDS, self.transport.close)


def limited_protocol(max_head_bytes: int, head_timeout: float,
                     max_connections: int | None) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "max_head_bytes": max_head_bytes, "head_timeout": head_timeout, "max_connections": max_connections})
