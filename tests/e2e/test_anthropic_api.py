"""The Messages API on the real model through the anthropic SDK from PyPI: messages.create,
messages.stream, a tool use and its result, count_tokens. Bodies and stream events are checked
against the SDK's own pydantic types."""
from __future__ import annotations

import json

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.e2e.conftest import API_KEY
from tests.server.named_events import parse_named_sse, strict_sdk

MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = {"temperature": 0}  # this SDK no longer has the argument; older ones and other clients send it
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}


@pytest.fixture(scope="module")
def claude(server_url):
    return anthropic.Anthropic(base_url=server_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_messages_create(claude):
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=20, messages=ASK, extra_body=GREEDY,
                                                   system="You are a helpful assistant.")
    message = strict_sdk(Message, raw.http_response.json())
    assert message.stop_reason in ("end_turn", "max_tokens") and "Paris" in message.content[0].text
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 20


def test_messages_stream(claude, http):
    with claude.messages.stream(model=MODEL, max_tokens=20, messages=ASK, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text and final.content[0].text == text and final.stop_reason in ("end_turn", "max_tokens")
    body = {"model": MODEL, "max_tokens": 20, "messages": ASK, "temperature": 0, "stream": True}
    events = parse_named_sse(http.post("/v1/messages", json=body).text)
    adapter = TypeAdapter(RawMessageStreamEvent)
    for event in events:
        strict_sdk(adapter, event)
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert [e["type"] for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_tool_use_round_trip(claude):
    first = claude.messages.create(model=MODEL, max_tokens=40, extra_body=GREEDY, tools=[WEATHER],
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    (tool_use,) = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and tool_use.name == "get_weather" and set(tool_use.input) == {"city"}
    second = claude.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, tools=[WEATHER], messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "22 C, sunny"}]}])
    assert second.content and second.content[0].type == "text" and second.content[0].text


def test_count_tokens_matches_what_generation_uses(claude, http):
    counted = claude.messages.count_tokens(model=MODEL, messages=ASK, system="Be brief.")
    tokenized = http.post("/tokenize", json={"model": MODEL, "messages": [
        {"role": "system", "content": "Be brief."}, *ASK]}).json()
    assert counted.input_tokens == tokenized["count"]
    message = claude.messages.create(model=MODEL, max_tokens=1, messages=ASK, system="Be brief.")
    assert message.usage.input_tokens == counted.input_tokens


def test_errors_in_anthropic_shape(claude, server_url):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert caught.value.body["error"]["type"] == "not_found_error"
    wrong = anthropic.Anthropic(base_url=server_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=MODEL, max_tokens=5, messages=ASK)


def test_structured_output_follows_the_schema(claude):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["name", "country"], "additionalProperties": False}
    message = claude.messages.create(model=MODEL, max_tokens=40, extra_body=GREEDY, messages=[
        {"role": "user", "content": "Describe Paris as JSON."}], output_config={"format": {"type": "json_schema",
                                                                                          "schema": schema}})
    jsonschema.validate(json.loads(message.content[0].text), schema)
