"""Shared by the server and e2e tests of /v1/responses and /v1/messages: named SSE events,
each Responses event checked against its own spec schema, Anthropic shapes against the SDK."""
from __future__ import annotations

import functools
import json

from tests.spec_validator import _spec_and_registry, validate


def parse_named_sse(text: str) -> list[dict]:
    """``event: <type>`` + ``data: {...}`` blocks → the data objects; the name must be the type."""
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if not lines:
            continue  # a keep-alive comment
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"], lines
        events.append(event)
    return events


@functools.lru_cache(maxsize=1)
def response_event_schemas() -> dict[str, str]:
    """Stream event type → the spec's schema for it (the members of ResponseStreamEvent)."""
    schemas = _spec_and_registry()[0]["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        out[schemas[name]["properties"]["type"]["enum"][0]] = name
    return out


def check_response_events(events: list[dict]) -> list[dict]:
    """Every event valid against its own schema; sequence numbers 0, 1, 2 … in order."""
    schemas = response_event_schemas()
    for event in events:
        validate(event, schemas[event["type"]])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def strict_sdk(model_type, body: dict):
    """The anthropic SDK's type (a model or a TypeAdapter) parses ``body`` and knows all its fields."""
    parsed = model_type.model_validate(body) if hasattr(model_type, "model_validate") else model_type.validate_python(body)
    assert not (getattr(parsed, "model_extra", None) or {}), parsed.model_extra
    return parsed
