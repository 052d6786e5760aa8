"""Shared by the server and e2e tests: SSE parsing and stream invariants, all spec-validated."""
from __future__ import annotations

import json

from tests.spec_validator import validate, validate_error

CHUNK_SCHEMA = {"chat.completion.chunk": "CreateChatCompletionStreamResponse",
                "text_completion": "CreateCompletionStreamResponse"}


def parse_sse(text: str) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded, ending with the literal "[DONE]"."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payload = "\n".join(data)
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def check_stream(events: list, n: int = 1, include_usage: bool = False) -> dict[int, str]:
    """Validate every chunk and the stream's shape; return the text per choice index."""
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = events[:-1]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        assert "error" not in chunk, chunk
        validate(chunk, CHUNK_SCHEMA[chunk["object"]])
        assert len({c["id"] for c in chunks}) == 1
        for choice in chunk["choices"]:
            i = choice["index"]
            assert i not in finish, f"choice {i} continued after its finish_reason"
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            texts[i] = texts.get(i, "") + (piece or "")
            if choice["finish_reason"] is not None:
                finish[i] = choice["finish_reason"]
    assert sorted(finish) == list(range(n)), finish  # exactly one finish_reason per choice
    if chunks[0]["object"] == "chat.completion.chunk":
        first_roles = [c["choices"][0]["delta"].get("role") for c in chunks[:n]]
        assert first_roles == ["assistant"] * n, chunks[:n]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all("usage" not in c or c["usage"] is None for c in chunks[:-1])
    else:
        assert all(c.get("usage") is None for c in chunks)
    return texts


def check_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = validate_error(response.json())
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body
