"""Admission: how many generation requests the server holds at once, and draining.

Decided in ASGI middleware on the resolved route, before the body is read, parsed, templated
or tokenized. A request counts from admission until its response has been sent in full
(a stream until its last event), so the count is what the server still owes clients.
"""
from __future__ import annotations

import asyncio

from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import resolve_route_name
from server.errors import APIError

GENERATION_ROUTE_NAMES = frozenset({
    "create_completion", "create_chat_completion", "create_engine_completion", "create_engine_chat_completion"})
# answered while draining: probes say 503 themselves, and metrics keep being scraped
DRAIN_EXEMPT_ROUTE_NAMES = frozenset({"health", "ready", "metrics"})


class Admission:
    """The in-flight count against ``max_in_flight``, and the draining flag set on SIGTERM."""

    def __init__(self, max_in_flight: int, retry_after_seconds: int = 1) -> None:
        self.max_in_flight = max_in_flight
        self.retry_after_seconds = retry_after_seconds
        self.num_in_flight = 0
        self.is_draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def can_admit(self) -> bool:
        return self.num_in_flight < self.max_in_flight

    def admit(self) -> None:
        self.num_in_flight += 1
        self._idle.clear()

    def release(self) -> None:
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
        if not admission.can_admit():
            response = APIError(
                429, f"The server is overloaded ({admission.num_in_flight} requests in flight, the limit is "
                     f"{admission.max_in_flight}); retry after {admission.retry_after_seconds} s.",
                code="server_overloaded").response(headers={"Retry-After": str(admission.retry_after_seconds)})
            await response(scope, receive, send)
            return
        admission.admit()
        try:
            await self.app(scope, receive, send)
        finally:
            admission.release()
