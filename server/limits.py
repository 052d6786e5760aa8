"""The request body's limits: its size (413) and the time it may take to arrive (408).

The body is read in full here, before admission counts the request: a client that sends its
headers and then trickles (or never sends) the body holds a connection, not an admission slot,
and past ``body_timeout`` seconds gets a 408 and a closed connection.

A body over the limit, declared (``Content-Length``) or streamed, is refused before anything
parses it. The refusal is sent at once (so a client that watches for an early answer, as curl
does, stops sending), but the response is only ended after the rest of the body has been read
and thrown away: closing a socket with unread bytes in it makes the kernel send a reset, which
can destroy the 413 before the client has read it. The drain is bounded (``DRAIN_MAX_BYTES``,
``DRAIN_IDLE_SECONDS`` without a byte, ``DRAIN_MAX_SECONDS`` in all); past a bound the
connection is closed anyway.
"""
from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

DRAIN_MAX_BYTES = 64 * 2**20
DRAIN_IDLE_SECONDS = 5.0
DRAIN_MAX_SECONDS = 30.0


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes``, declared or streamed, before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.refuse(receive, send)
            return
        # read the (bounded) body now, then replay it; later receives go to the client as usual
        messages: list[Message] = []
        num_bytes = 0
        with anyio.move_on_after(self.body_timeout) as timer:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                num_bytes += len(message.get("body", b""))
                if num_bytes > self.max_bytes:
                    await self.refuse(receive, send, is_body_done=not message.get("more_body", False))
                    return
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            response = APIError(408, f"The request body did not arrive within {self.body_timeout:g} s "
                                     f"(--body-timeout).", code="body_timeout").response(headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["body_bytes"] = num_bytes  # admission's estimate of the prompt

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def refuse(self, receive: Receive, send: Send, is_body_done: bool = False) -> None:
        """Send the 413 in full, read and discard the rest of the body (bounded), end the response."""
        response = APIError(413, f"The request body is larger than {self.max_bytes} bytes "
                                 f"(--max-request-body-bytes).", code="request_too_large").response(
            headers={"Connection": "close"})
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        if not is_body_done:
            await drain_body(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain_body(receive: Receive) -> int:
    """Read and discard request body messages until the body ends, the client leaves or a
    bound is reached; the number of bytes discarded."""
    num_bytes = 0
    with anyio.move_on_after(DRAIN_MAX_SECONDS):
        while num_bytes <= DRAIN_MAX_BYTES:
            with anyio.move_on_after(DRAIN_IDLE_SECONDS) as idle:
                message = await receive()
            if idle.cancelled_caught or message["type"] != "http.request":
                break
            num_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
    return num_bytes
