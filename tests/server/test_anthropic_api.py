"""/v1/messages and /v1/messages/count_tokens over the fake engine: shapes checked against the
``anthropic`` SDK's own pydantic types, the stream's event order, tools, errors in Anthropic's
shape (from every layer: validation, auth, admission), and x-api-key auth."""
from __future__ import annotations

import json

import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.named_events import parse_named_sse as parse_events
from tests.server.named_events import strict_sdk as strict

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EVENT = TypeAdapter(RawMessageStreamEvent)


def post(client, body: dict, **kwargs):
    return client.post("/v1/messages", json={"model": "gpt-4", "max_tokens": 64, "temperature": 0, **body}, **kwargs)


def check_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    strict(ErrorResponse, body)
    assert body["type"] == "error" and body["error"]["type"] == error_type and body["error"]["message"], body
    return body


def test_message_shape(client, fake_engine):
    r = post(client, {"system": [{"type": "text", "text": "Be brief."}],
                      "messages": [{"role": "user", "content": "Capital of France?"}]},
             headers={"anthropic-version": "2023-06-01"})
    message = strict(Message, r.json())
    assert message.role == "assistant" and message.model == "gpt-4" and message.id.startswith("msg_")
    assert message.content[0].text == "The capital of France is Paris." and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 32 and message.usage.input_tokens > 0
    (prompt, params), = fake_engine.requests.values()
    assert fake_engine.tokenizer.decode(prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert params.max_tokens == 64


def test_max_tokens_and_stop_sequence_reasons(client):
    assert post(client, {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).json()["stop_reason"] \
        == "max_tokens"
    body = post(client, {"stop_sequences": ["France"], "messages": [{"role": "user", "content": "x"}]}).json()
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "France"
    assert body["content"][0]["text"].startswith("The capital of ") and "France" not in body["content"][0]["text"]


def test_stream_events_in_order_each_an_sdk_type(client):
    events = parse_events(post(client, {"stream": True, "messages": [{"role": "user", "content": "x"}]}).text)
    for event in events:
        strict(EVENT, event)
    kinds = [e["type"] for e in events]
    num_deltas = kinds.count("content_block_delta")
    assert kinds == (["message_start", "content_block_start"] + ["content_block_delta"] * num_deltas
                     + ["content_block_stop", "message_delta", "message_stop"])
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "The capital of France is Paris."
    assert events[-2]["delta"]["stop_reason"] == "end_turn" and events[-2]["usage"]["output_tokens"] == 32


def test_tool_use_and_its_result_round_trip():
    engine = FakeEngine(max_model_len=4096, script="Let me look." + CALL)
    with make_client(engine) as client:
        body = post(client, {"max_tokens": 200, "tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in Paris?"}]}).json()
        message = strict(Message, body)
        text, tool_use = message.content
        assert text.text == "Let me look." and message.stop_reason == "tool_use"
        assert tool_use.name == "get_weather" and tool_use.input == {"city": "Paris"} and tool_use.id.startswith("toolu_")
        events = parse_events(post(client, {"stream": True, "max_tokens": 200, "tools": [WEATHER],
                                            "messages": [{"role": "user", "content": "Weather?"}]}).text)
        for event in events:
            strict(EVENT, event)
        starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
        partial = "".join(e["delta"]["partial_json"] for e in events
                          if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta")
        assert starts == ["text", "tool_use"] and json.loads(partial) == {"city": "Paris"}
        assert events[-2]["delta"]["stop_reason"] == "tool_use"
        engine.script = "It is sunny."
        follow = post(client, {"tools": [WEATHER], "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": body["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "22 C"},
                                         {"type": "text", "text": "Thanks"}]}]}).json()
        assert follow["content"][0]["text"] == "It is sunny."
    prompt = engine.tokenizer.decode(list(engine.requests.values())[-1][0])
    assert '"city": "Paris"' in prompt and "22 C" in prompt and prompt.index("22 C") < prompt.index("Thanks")


def test_tool_choice_any_and_tool_force_a_call():
    fake_engine = FakeEngine(max_model_len=4096)
    with make_client(fake_engine) as client:
        force_calls(client, fake_engine)


def force_calls(client, fake_engine):
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        r = post(client, {"tools": [WEATHER], "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200, r.text
        (_, params) = list(fake_engine.requests.values())[-1]
        assert params.guide is not None  # the calls' grammar


def test_output_config_format_is_held_by_a_grammar(client, fake_engine):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = post(client, {"messages": [{"role": "user", "content": "x"}],
                      "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": schema}}})
    assert r.status_code == 200, r.text
    (_, params), = fake_engine.requests.values()
    assert params.guide is not None


def test_count_tokens(client):
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello there"}]}
    r = client.post("/v1/messages/count_tokens", json=body)
    counted = strict(MessageTokensCount, r.json())
    longer = client.post("/v1/messages/count_tokens", json={**body, "system": "A long system prompt."}).json()
    assert counted.input_tokens > len("Hello there") and longer["input_tokens"] > counted.input_tokens


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": None},
    {"messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
    {"messages": []},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web"}]},
    {"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 1024}},
    {"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "absent"},
     "tools": [WEATHER]},
])
def test_bad_requests_are_anthropic_400s(client, body):
    payload = {"model": "gpt-4", "max_tokens": 16, **body}
    check_error(client.post("/v1/messages", json={k: v for k, v in payload.items() if v is not None}),
                400, "invalid_request_error")


def test_unknown_model_and_missing_model(client):
    check_error(post(client, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404,
                "not_found_error")
    check_error(client.post("/v1/messages", json={"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
                400, "invalid_request_error")


def test_x_api_key_and_bearer_both_authenticate(auth_client):
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    assert post(auth_client, body, headers={"x-api-key": "key-two"}).status_code == 200
    assert post(auth_client, body, headers={"Authorization": "Bearer key-one"}).status_code == 200
    check_error(post(auth_client, body, headers={"x-api-key": "wrong"}), 401, "authentication_error")
    assert "x-api-key" in check_error(post(auth_client, body), 401, "authentication_error")["error"]["message"]
    counted = auth_client.post("/v1/messages/count_tokens", headers={"x-api-key": "key-one"},
                               json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert counted.status_code == 200
    # the OpenAI routes keep OpenAI's shape and do not take x-api-key
    assert auth_client.get("/v1/models", headers={"x-api-key": "key-one"}).json()["error"]["code"] == "invalid_api_key"


def test_overload_is_an_anthropic_429():
    with make_client(FakeEngine(), max_num_seqs=1, max_queued_requests=0) as client:
        client.app.state.admission.num_in_flight = 1  # one request in flight already
        r = post(client, {"messages": [{"role": "user", "content": "x"}]})
        client.app.state.admission.num_in_flight = 0
    check_error(r, 429, "rate_limit_error")
    assert r.headers["retry-after"] == "1"


def test_body_over_the_limit_is_an_anthropic_413():
    with make_client(FakeEngine(), max_request_body_bytes=1024) as client:
        r = post(client, {"messages": [{"role": "user", "content": "x" * 4000}]})
    check_error(r, 413, "invalid_request_error")  # the SDK's error types have no request_too_large
