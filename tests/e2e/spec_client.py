"""An `openai` client whose every response body and stream chunk is checked against the spec
before the client sees it (an httpx response hook), so tests that go through the client's
parsed objects still prove the wire format."""
from __future__ import annotations

import json

import httpx
import openai

from tests.server.helpers import parse_sse
from tests.spec_validator import COMPLETION_ECHO_SCHEMAS, COMPLETION_STREAM_SCHEMA, validate, validate_error

SCHEMAS = {"text_completion": "CreateCompletionResponse", "chat.completion": "CreateChatCompletionResponse",
           "model": "Model", "list": "ListModelsResponse"}
CHUNK_SCHEMAS = {"text_completion": COMPLETION_STREAM_SCHEMA, "chat.completion.chunk": "CreateChatCompletionStreamResponse"}


def has_echo_nulls(body: dict) -> bool:
    """Echo with logprobs: the first prompt token's logprob is null (see spec_validator)."""
    return any(None in ((c.get("logprobs") or {}).get("token_logprobs") or []) for c in body.get("choices", []))


def check_body(body: dict, schemas: dict[str, str]) -> int:
    if "error" in body:
        validate_error(body)
        return 1
    name = schemas[body["object"]]
    if body["object"] == "text_completion" and has_echo_nulls(body):
        name = COMPLETION_ECHO_SCHEMAS[name]
    validate(body, name)
    return 1


def check_response(response: httpx.Response) -> int:
    """Validate a response's body or every chunk of its stream; return how many were checked."""
    response.read()  # buffered: the client then reads the same bytes
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        events = parse_sse(response.text)
        assert events and events[-1] == "[DONE]", events[-2:]
        return sum(check_body(e, CHUNK_SCHEMAS) for e in events[:-1])
    if kind.startswith("application/json"):
        body = json.loads(response.content)
        if response.status_code >= 400:
            validate_error(body)
            return 1
        if isinstance(body, dict) and body.get("object") in SCHEMAS:
            return check_body(body, SCHEMAS)
    return 0


def validating_openai_client(server_url: str, api_key: str) -> openai.OpenAI:
    """``client.num_checked``: bodies and chunks validated so far."""
    def hook(response: httpx.Response) -> None:
        client.num_checked += check_response(response)

    http_client = httpx.Client(timeout=120, event_hooks={"response": [hook]})
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=api_key, max_retries=0, http_client=http_client)
    client.num_checked = 0
    return client
