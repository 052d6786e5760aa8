"""Stored responses (``store: true``) for GET / DELETE / input_items and ``previous_response_id``.

In memory only: a restart forgets every response. Each API key has its own namespace (one
key never sees, continues or deletes another's responses), bounded by a count and by bytes;
past either cap the oldest responses of that key go first. With no keys configured there is
one namespace. A response stores its whole conversation (its input after the earlier turns),
so a continuation works even after an earlier turn has been evicted.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

logger = logging.getLogger("gptserve.server")


@dataclass
class StoredResponse:
    response: dict  # the Response body, as returned
    items: list[dict]  # the conversation it answered: earlier turns' items, then its own input
    num_bytes: int


def namespace_of(authorization: str | None, x_api_key: str | None, is_auth_enabled: bool) -> str:
    """The store namespace of a request: a digest of its (already checked) key, or one shared
    namespace when the server has no keys (then any key is accepted, so keys mean nothing)."""
    if not is_auth_enabled:
        return ""
    key = x_api_key
    if authorization and authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip()
    return hashlib.sha256((key or "").encode("utf-8", "surrogateescape")).hexdigest()


class ResponseStore:
    def __init__(self, max_responses: int, max_bytes: int, is_keyed: bool = False) -> None:
        self.max_responses = max_responses  # per key
        self.max_bytes = max_bytes  # per key
        self.is_keyed = is_keyed  # API keys are configured: one namespace per key
        self._spaces: dict[str, OrderedDict[str, StoredResponse]] = {}
        self._num_bytes: dict[str, int] = {}

    def num_bytes(self, namespace: str) -> int:
        return self._num_bytes.get(namespace, 0)

    def __len__(self) -> int:
        return sum(len(space) for space in self._spaces.values())

    def put(self, namespace: str, response: dict, items: list[dict]) -> bool:
        """Store it (evicting the key's oldest as needed); False if it alone passes the byte cap."""
        num_bytes = len(json.dumps(response)) + len(json.dumps(items))
        if num_bytes > self.max_bytes or self.max_responses == 0:
            logger.warning("response %s (%d bytes) not stored: over the store's cap of %d bytes per key",
                           response["id"], num_bytes, self.max_bytes)
            return False
        space = self._spaces.setdefault(namespace, OrderedDict())
        self.delete(namespace, response["id"])
        space[response["id"]] = StoredResponse(response, items, num_bytes)
        self._num_bytes[namespace] = self.num_bytes(namespace) + num_bytes
        while len(space) > self.max_responses or self._num_bytes[namespace] > self.max_bytes:
            _, oldest = space.popitem(last=False)
            self._num_bytes[namespace] -= oldest.num_bytes
        return True

    def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        return self._spaces.get(namespace, {}).get(response_id)

    def delete(self, namespace: str, response_id: str) -> bool:
        space = self._spaces.get(namespace)
        stored = space.pop(response_id, None) if space is not None else None
        if stored is None:
            return False
        self._num_bytes[namespace] -= stored.num_bytes
        return True
