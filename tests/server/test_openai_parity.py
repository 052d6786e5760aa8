"""Small places where clients met a difference from OpenAI: trailing slashes, stream_options
without a stream, tool-call-only content, and one entry per tool call per chunk."""
from __future__ import annotations

import pytest

from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

MSG = [{"role": "user", "content": "hi"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("method,path,body,schema", [
    ("POST", "/v1/chat/completions/", {"messages": MSG, "max_tokens": 2}, "CreateChatCompletionResponse"),
    ("POST", "/v1/completions/", {"prompt": "x", "max_tokens": 2}, "CreateCompletionResponse"),
    ("GET", "/v1/models/", None, "ListModelsResponse"),
])
def test_a_trailing_slash_is_the_same_route(client, method, path, body, schema):
    r = client.request(method, path, json=body, follow_redirects=False)
    assert r.status_code == 200, (r.status_code, r.text)
    validate(r.json(), schema)


def test_a_trailing_slash_still_needs_the_key(auth_client):
    check_error(auth_client.post("/v1/chat/completions/", json={"messages": MSG}), 401, code="invalid_api_key")
    assert auth_client.get("/health/").status_code == 200


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": MSG}),
                                       ("/v1/completions", {"prompt": "x"})])
def test_stream_options_needs_stream(client, path, body):
    for stream in ({}, {"stream": False}):
        r = client.post(path, json={**body, **stream, "max_tokens": 2, "stream_options": {"include_usage": True}})
        check_error(r, 400, param="stream_options")
    assert client.post(path, json={**body, "max_tokens": 2, "stream_options": None}).status_code == 200


def test_tool_call_only_content_is_null_streamed_and_whole(monkeypatch):
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    with make_client(FakeEngine(max_model_len=4096, script=CALL)) as client:
        body = {"messages": MSG, "tools": [WEATHER], "temperature": 0, "max_tokens": 200}
        whole = client.post("/v1/chat/completions", json=body).json()
        assert whole["choices"][0]["message"]["content"] is None
        events = parse_sse(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
        check_stream(events)
        contents = [c["delta"]["content"] for e in events[:-1] for c in e["choices"] if "content" in c["delta"]]
        assert contents == [None]  # the role chunk's, null as in the whole response; no "" anywhere
