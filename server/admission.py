"""Admission: how much work the server holds at once, for how long, and draining.

Decided in ASGI middleware on the resolved route, once the body is in (server.limits reads it,
under a size limit and a timeout) and before it is parsed, templated or tokenized: a client
slow to send its body holds no slot. A request counts from admission until its response has been sent in full
(a stream until its last event), so the count is what the server still owes clients.

Two caps, each answered with 429, ``Retry-After`` and an OpenAI error of type "overloaded":

- requests in flight: ``max_in_flight`` (running + queued requests);
- queued prompt tokens: ``max_queued_tokens``, the prompt tokens admitted but not yet
  prefilled (a prompt leaves the queue with its first generated token). A new request's
  prompt is *estimated* from its body size (bytes / ``BYTES_PER_TOKEN``), since nothing has
  been parsed yet; once serving has tokenized it, ``Generation`` replaces the
  estimate with the exact count. A request is never refused for its own size alone: with
  nothing queued it is admitted (the context length and the body limit bound it).

The ``Ticket`` of the request being served is in ``current_ticket`` (a context variable, so
``Generation`` finds it without the serving layer passing it along); it also carries the
request's deadline when ``--request-timeout`` is set.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar

from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import resolve_route_name
from server.errors import APIError

logger = logging.getLogger("gptserve.server")
# the routes admission counts and caps (embeddings too: they take the CPU or GPU as generation
# does; /tokenize and /detokenize: a large text takes seconds of a worker thread)
GENERATION_ROUTE_NAMES = frozenset({
    "create_completion", "create_chat_completion", "create_engine_completion", "create_engine_chat_completion",
    "create_embedding", "create_response", "create_message", "tokenize", "detokenize"})
# answered while draining: probes say 503 themselves, and metrics keep being scraped
DRAIN_EXEMPT_ROUTE_NAMES = frozenset({"health", "ready", "metrics"})
# a JSON body's bytes per prompt token, roughly (English text is ~4 characters a token)
BYTES_PER_TOKEN = 4


class Ticket:
    """One admitted request: the queued prompt tokens it holds, and its deadline."""

    def __init__(self, admission: Admission, num_estimated_tokens: int) -> None:
        self.admission = admission
        self.num_queued_tokens = 0
        self.deadline = (time.monotonic() + admission.request_timeout
                         if admission.request_timeout is not None else None)
        self.queue_tokens(num_estimated_tokens)

    def queue_tokens(self, num_tokens: int) -> None:
        self.admission.num_queued_tokens += num_tokens
        self.num_queued_tokens += num_tokens

    def dequeue_tokens(self, num_tokens: int | None = None) -> None:
        """Take ``num_tokens`` (default: all this request holds) off the queue."""
        num_tokens = self.num_queued_tokens if num_tokens is None else min(num_tokens, self.num_queued_tokens)
        self.admission.num_queued_tokens -= num_tokens
        self.num_queued_tokens -= num_tokens


current_ticket: ContextVar[Ticket | None] = ContextVar("gptserve_admission_ticket", default=None)


class Admission:
    """The in-flight count and queued tokens against their caps, the request timeout, and the
    draining flag set on SIGTERM."""

    def __init__(self, max_in_flight: int, retry_after_seconds: int = 1, *,
                 max_queued_tokens: int | None = None, request_timeout: float | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued_tokens = max_queued_tokens
        self.request_timeout = request_timeout
        self.retry_after_seconds = retry_after_seconds
        self.num_in_flight = 0
        self.num_queued_tokens = 0
        self.is_draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def refusal(self, num_estimated_tokens: int = 0) -> str | None:
        """Why a request of about ``num_estimated_tokens`` prompt tokens is refused now, or None."""
        if self.num_in_flight >= self.max_in_flight:
            return f"{self.num_in_flight} requests in flight, the limit is {self.max_in_flight}"
        if (self.max_queued_tokens is not None and self.num_queued_tokens > 0
                and self.num_queued_tokens + num_estimated_tokens > self.max_queued_tokens):
            return (f"{self.num_queued_tokens} prompt tokens queued, this request's ~{num_estimated_tokens} "
                    f"would pass the limit of {self.max_queued_tokens}")
        return None

    def admit(self, num_estimated_tokens: int = 0) -> Ticket:
        self.num_in_flight += 1
        self._idle.clear()
        return Ticket(self, num_estimated_tokens)

    def release(self, ticket: Ticket | None = None) -> None:
        if ticket is not None:
            ticket.dequeue_tokens()
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait for those in flight. True if they all finished in time."""
        self.is_draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def estimate_prompt_tokens(scope: Scope) -> int:
    """The prompt tokens a request probably carries, from its body's size (read already, by
    server.limits), else its declared size (0 if none)."""
    num_bytes = scope.get("state", {}).get("body_bytes")
    if num_bytes is not None:
        return num_bytes // BYTES_PER_TOKEN
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return int(declared) // BYTES_PER_TOKEN if declared.isdigit() else 0


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, admission: Admission, router: Router) -> None:
        self.app = app
        self.admission = admission
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = resolve_route_name(self.router, scope)
        admission = self.admission
        if admission.is_draining and name not in DRAIN_EXEMPT_ROUTE_NAMES:
            response = APIError(503, "The server is shutting down; send the request to another replica.",
                                code="server_shutting_down").response(headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        if name not in GENERATION_ROUTE_NAMES:
            await self.app(scope, receive, send)
            return
        num_estimated_tokens = estimate_prompt_tokens(scope)
        reason = admission.refusal(num_estimated_tokens)
        if reason is not None:
            response = APIError(
                429, f"The server is overloaded ({reason}); retry after {admission.retry_after_seconds} s.",
                code="server_overloaded").response(headers={"Retry-After": str(admission.retry_after_seconds)})
            await response(scope, receive, send)
            return
        ticket = admission.admit(num_estimated_tokens)
        if logger.isEnabledFor(logging.DEBUG):  # request fields: escaped by server.logfilter
            logger.debug("%s %s admitted: %d in flight, ~%d prompt tokens queued (user-agent %s)",
                         scope["method"], scope["path"], admission.num_in_flight, admission.num_queued_tokens,
                         dict(scope["headers"]).get(b"user-agent", b"").decode("latin-1"))
        reset = current_ticket.set(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            current_ticket.reset(reset)
            admission.release(ticket)
