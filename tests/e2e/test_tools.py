"""Tool calls on the real model through the real openai client: forced calls are valid JSON for
their schema (the grammar), streamed arguments reassemble, tool results go back into the
conversation. Every body and chunk is validated against the spec."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate

MODEL = "SmolLM2-135M-Instruct"
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                      "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                                                     "required": ["timezone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def check_call(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    assert set(args) <= set(SCHEMAS[name]["properties"])  # forced arguments are closed objects
    return args


@pytest.fixture(scope="module")
def named_call(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=60)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    return raw.parse()


def test_named_tool_choice_full_response(named_call):
    choice = named_call.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    check_call("get_weather", call.function.arguments)


def test_required_streamed_arguments_reassemble(openai_client, http):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
            "temperature": 0, "max_tokens": 60, "stream": True, "stream_options": {"include_usage": True}}
    events = parse_sse(http.post("/v1/chat/completions", json=body).text)
    check_stream(events, include_usage=True)  # every chunk against the spec, one finish_reason
    assert [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]][-1] == "tool_calls"
    # the openai client's own accumulator puts the pieces together
    with openai_client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                               parallel_tool_calls=False, temperature=0, max_tokens=60) as stream:
        pieces = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert len(pieces) > 2  # the arguments came in fragments, not in one piece
    assert "".join(p.arguments_delta for p in pieces) == call.function.arguments
    check_call(call.function.name, call.function.arguments)


def test_sampled_choices_each_make_valid_calls(http):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "n": 3, "temperature": 0.7,
            "seed": 3, "max_tokens": 60, "parallel_tool_calls": False, "stream": True}
    events = parse_sse(http.post("/v1/chat/completions", json=body).text)
    check_stream(events, n=3)
    calls: dict[tuple[int, int], dict] = {}
    for chunk in events[:-1]:
        for choice in chunk["choices"]:
            for piece in choice["delta"].get("tool_calls", []):
                call = calls.setdefault((choice["index"], piece["index"]), {"name": None, "arguments": ""})
                call["name"] = piece.get("function", {}).get("name") or call["name"]
                call["arguments"] += piece.get("function", {}).get("arguments") or ""
    assert sorted(calls) == [(0, 0), (1, 0), (2, 0)]  # one call per choice: parallel_tool_calls false
    for call in calls.values():
        check_call(call["name"], call["arguments"])


class GetWeather(BaseModel):
    city: str
    unit: str


def test_parse_with_a_pydantic_tool(openai_client):
    raw = openai_client.chat.completions.with_raw_response.parse(
        model=MODEL, messages=ASK, tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    (call,) = raw.parse().choices[0].message.tool_calls
    assert call.function.name == "GetWeather" and isinstance(call.function.parsed_arguments, GetWeather)


def test_tool_result_round_trip(openai_client, named_call):
    call = named_call.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                             "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=history, tools=TOOLS, temperature=0, max_tokens=16)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    answer = raw.parse()
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")
    # the call and its result were rendered into the prompt, not dropped
    plain = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=1)
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 30


def test_tool_choice_none_answers_in_text(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    message = raw.parse().choices[0].message
    assert message.tool_calls is None and message.content


def test_deprecated_functions_and_function_call(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, functions=[t["function"] for t in TOOLS], function_call={"name": "get_weather"},
        temperature=0, max_tokens=60)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    check_call("get_weather", choice.message.function_call.arguments)
