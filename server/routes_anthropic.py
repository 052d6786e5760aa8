"""Thin handlers for Anthropic's Messages API, and the middleware that gives those routes
Anthropic's conventions: the key may come as ``x-api-key`` (the ``anthropic`` SDK's way) as well
as ``Authorization: Bearer``, and every error, whoever raised it (auth, admission, the body limit,
validation, serving), leaves in Anthropic's shape. ``anthropic-version`` is accepted, whatever it says."""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import resolve_route_name
from server.protocol_anthropic import CountTokensRequest, MessagesRequest
from server.routes import serving_for, with_cancellation
from server.serving_anthropic import anthropic_error, count_tokens, create_message

router = APIRouter()
ANTHROPIC_ROUTE_NAMES = frozenset({"create_message", "count_message_tokens"})


@router.post("/v1/messages", name="create_message")
@with_cancellation
async def create_message_route(body: MessagesRequest, raw_request: Request):
    return await create_message(serving_for(raw_request, body.model), body)


@router.post("/v1/messages/count_tokens", name="count_message_tokens")
async def count_message_tokens(body: CountTokensRequest, raw_request: Request):
    return await count_tokens(serving_for(raw_request, body.model), body)


NO_KEY = "You didn't provide an API key. Send it as 'x-api-key: <key>' (or 'Authorization: Bearer <key>')."


def reshape_error(status_code: int, body: bytes, has_key: bool = True) -> bytes:
    """An OpenAI error body (or any other) → Anthropic's error body."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace") or f"HTTP {status_code}"
    if status_code == 401 and not has_key:  # name the header this API's clients use
        message = NO_KEY
    return json.dumps(anthropic_error(status_code, message)).encode()


class AnthropicMiddleware:
    """Outermost: sees the errors of every other middleware on the Anthropic routes."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or resolve_route_name(self.router, scope) not in ANTHROPIC_ROUTE_NAMES:
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        has_key = any(name in (b"authorization", b"x-api-key") for name, _ in headers)
        if not any(name == b"authorization" for name, _ in headers):
            key = next((value for name, value in headers if name == b"x-api-key"), None)
            if key is not None:
                scope = {**scope, "headers": [*headers, (b"authorization", b"Bearer " + key)]}
        error_start: Message | None = None
        parts: list[bytes] = []

        async def send_reshaped(message: Message) -> None:
            nonlocal error_start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error_start = message  # held until the body is complete
                return
            if error_start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = reshape_error(error_start["status"], b"".join(parts), has_key)
            kept = [(k, v) for k, v in error_start["headers"] if k.lower() != b"content-length"]
            await send({**error_start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_reshaped)
