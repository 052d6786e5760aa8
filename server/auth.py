"""API keys: ``Authorization: Bearer <key>``, compared in constant time against every key.

Deny by default: the middleware resolves each request to the route the router would pick
(the same ``route.matches`` the router runs, so ``//v1/models``, ``%2F`` tricks and dot
segments resolve exactly as they will be served) and lets through without a key only
routes named in ``PUBLIC_ROUTE_NAMES``. A route added later is therefore protected
unless someone names it here. Unmatched paths are refused too.

A request with more than one ``Authorization`` header is refused (400) whatever they say: a
server that takes one and a proxy that checked another must not disagree about who asked.

Each key has its own prefix cache partition: the middleware puts the matched key's salt in
``current_cache_salt`` and the serving layer copies it into ``SamplingParams.cache_salt``, so
``cached_tokens`` cannot tell one key's client what another's sent (``--share-prefix-cache``
turns this off). Without keys every client shares one partition.
"""
from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError

# /health and /ready for probes; "static" is the chat page at "/", which asks for the key itself
PUBLIC_ROUTE_NAMES = frozenset({"health", "ready", "static"})

# the prefix-cache salt of the key the request being served came with (None: shared)
current_cache_salt: ContextVar[str | None] = ContextVar("gptserve_cache_salt", default=None)


def _digest(key: str | bytes) -> bytes:
    # hashing first makes every comparison the same length, so timing says nothing of key length
    return hashlib.sha256(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key).digest()


class APIKeyChecker:
    def __init__(self, api_keys: list[str]) -> None:
        self._digests = [_digest(key) for key in api_keys]

    @property
    def is_enabled(self) -> bool:
        return bool(self._digests)

    def is_valid(self, authorization: bytes | None) -> bool:
        return self.matching_digest(authorization) is not None

    def matching_digest(self, authorization: bytes | None) -> bytes | None:
        """The SHA-256 of the configured key that ``authorization`` carries, or None."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        given = _digest(authorization[7:].strip())
        is_valid = False
        for digest in self._digests:  # no early exit: every key is compared every time
            is_valid |= hmac.compare_digest(given, digest)
        return given if is_valid else None


def resolve_route_name(router: Router, scope: Scope) -> str | None:
    """The name of the route that fully matches this request, as the router will dispatch it."""
    for route in router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:  # the router dispatches the first full match, as here
            return getattr(route, "name", None)
    return None  # no route, or only one for another method (405): never public


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, checker: APIKeyChecker, router: Router,
                 share_prefix_cache: bool = False) -> None:
        self.app = app
        self.checker = checker
        self.router = router
        self.share_prefix_cache = share_prefix_cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.checker.is_enabled:
            await self.app(scope, receive, send)
            return
        if resolve_route_name(self.router, scope) in PUBLIC_ROUTE_NAMES:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) > 1:
            response = APIError(400, "The request has more than one Authorization header; send exactly one.",
                                code="invalid_authorization_header").response()
            await response(scope, receive, send)
            return
        authorization = values[0] if values else None
        digest = self.checker.matching_digest(authorization)
        if digest is None:
            message = ("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
                       if not authorization else "Incorrect API key provided.")
            response = APIError(401, message, code="invalid_api_key").response(
                headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        reset = current_cache_salt.set(None if self.share_prefix_cache else digest.hex())
        try:
            await self.app(scope, receive, send)
        finally:
            current_cache_salt.reset(reset)
