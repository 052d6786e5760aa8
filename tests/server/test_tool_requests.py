"""Structured-output and tool fields through the app over FakeEngine: 400s, guides, response shapes."""
from __future__ import annotations

import json

import pytest

from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

MSG = [{"role": "user", "content": "Weather in Paris?"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(max_model_len=4096)  # byte tokens: the tools' system prompt is long


def chat(**fields) -> dict:
    return {"model": "gpt-4", "messages": MSG, "max_tokens": 100, **fields}


BAD = [  # (path, body, param)
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}),
     "response_format"),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
     "response_format.json_schema.name"),
    (CHAT, chat(response_format={"type": "json_schema"}), "response_format"),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "a string"}}),
     "response_format.json_schema.schema"),
    (CHAT, chat(guided_regex="a(b"), "guided_regex"),
    (COMP, {"model": "gpt-4", "prompt": "x", "guided_regex": "a(b"}, "guided_regex"),
    (COMP, {"model": "gpt-4", "prompt": "x", "guided_choice": []}, "guided_choice"),
    (COMP, {"model": "gpt-4", "prompt": "x", "structured_outputs": {"json": "{not json"}}, "structured_outputs"),
    (COMP, {"model": "gpt-4", "prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    (COMP, {"model": "gpt-4", "prompt": "x", "structured_outputs": {"grammar": "start: nowhere"}}, "structured_outputs"),
    (COMP, {"model": "gpt-4", "prompt": "x", "guided_regex": "a", "guided_choice": ["b"]}, None),
    (CHAT, chat(guided_choice=["a"], response_format={"type": "json_object"}), "response_format"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]), "tools[0].function.parameters"),
    (CHAT, chat(tools=[{"type": "code_interpreter"}]), "tools[0].type"),
    (CHAT, chat(tool_choice="required"), "tool_choice"),
    (CHAT, chat(tools=[WEATHER], tool_choice="sometimes"), "tool_choice"),
    (CHAT, chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}}), "tool_choice"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
                tool_choice="required"), "tools"),
    (CHAT, chat(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}), "tools"),
    (CHAT, chat(functions=[WEATHER["function"]], function_call={"name": "other"}), "function_call"),
    (CHAT, chat(functions=[WEATHER["function"]], tools=[WEATHER]), None),
    (CHAT, chat(functions=[{"name": "f", "parameters": []}]), "functions[0].parameters"),
    (CHAT, chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": "f"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
]


@pytest.mark.parametrize("path,body,param", BAD)
def test_bad_schemas_and_tools_are_400_naming_the_field(client, fake_engine, path, body, param):
    check_error(client.post(path, json=body), 400, param=param)
    assert not fake_engine.requests


def guide_of(engine: FakeEngine):
    (_, params), = engine.requests.values()
    return params.guide


@pytest.mark.parametrize("body,is_guided", [
    (chat(), False),
    (chat(response_format={"type": "text"}), False),
    (chat(response_format={"type": "json_object"}), True),
    (chat(guided_choice=["yes", "no"]), True),
    (chat(structured_outputs={"regex": "[0-9]+"}), True),
    (chat(tools=[WEATHER]), False),  # auto: free text, parsed afterwards
    (chat(tools=[WEATHER], tool_choice="none"), False),
    (chat(tools=[WEATHER], tool_choice="required"), True),
    (chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}), True),
])
def test_the_engine_gets_a_guide_only_when_output_is_constrained(client, fake_engine, body, is_guided):
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert (guide_of(fake_engine) is not None) == is_guided


@pytest.fixture
def tool_client(monkeypatch):
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    engine = FakeEngine(max_model_len=4096, script="Checking." + CALL)
    with make_client(engine) as c:
        yield c, engine


def test_tool_calls_in_a_full_response(tool_client):
    client, _ = tool_client
    body = client.post(CHAT, json=chat(tools=[WEATHER], temperature=0)).json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_tool_calls_streamed_as_deltas(tool_client):
    client, _ = tool_client
    events = parse_sse(client.post(CHAT, json=chat(tools=[WEATHER], temperature=0, stream=True)).text)
    texts = check_stream(events)  # every chunk validated against the spec
    assert texts[0] == "Checking."
    pieces = [tc for e in events[:-1] for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == "get_weather"
    assert all(set(p) == {"index", "function"} for p in pieces[1:])
    for e in events[:-1]:  # one entry per call index per chunk, as OpenAI sends (delta.tool_calls[0] is whole)
        entries = [tc["index"] for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
        assert len(entries) == len(set(entries)), e
    arguments = "".join(p["function"]["arguments"] for p in pieces)
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_without_tools_the_same_text_is_content(tool_client):
    client, _ = tool_client
    body = client.post(CHAT, json=chat(temperature=0)).json()
    assert body["choices"][0]["message"]["content"] == "Checking." + CALL
    assert "tool_calls" not in body["choices"][0]["message"] and body["choices"][0]["finish_reason"] == "stop"


def test_tool_history_renders_into_the_prompt(tool_client):
    client, engine = tool_client
    messages = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    assert client.post(CHAT, json=chat(messages=messages, tools=[WEATHER])).status_code == 200
    (prompt_ids, _), = engine.requests.values()
    prompt = engine.tokenizer.decode(prompt_ids)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n22 C\n</tool_response>" in prompt


def test_deprecated_functions_answer_with_function_call(tool_client):
    client, engine = tool_client
    body = client.post(CHAT, json=chat(functions=[WEATHER["function"]], function_call={"name": "get_weather"},
                                       temperature=0)).json()
    validate(body, "CreateChatCompletionResponse")
    message, reason = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
    assert reason == "function_call" and "tool_calls" not in message
    assert message["function_call"]["name"] == "get_weather"
    assert json.loads(message["function_call"]["arguments"]) == {"city": "Paris"}
    (_, params), = engine.requests.values()
    assert params.guide is not None  # the named function is forced like a named tool
    events = parse_sse(client.post(CHAT, json=chat(functions=[WEATHER["function"]], temperature=0, stream=True)).text)
    check_stream(events)
    pieces = [c["delta"]["function_call"] for e in events[:-1] for c in e["choices"] if "function_call" in c["delta"]]
    assert pieces[0]["name"] == "get_weather" and all("name" not in p for p in pieces[1:])
    assert json.loads("".join(p.get("arguments", "") for p in pieces)) == {"city": "Paris"}
    assert events[-2]["choices"][0]["finish_reason"] == "function_call"


def test_deprecated_function_messages_render_like_tool_messages(tool_client):
    client, engine = tool_client
    messages = MSG + [{"role": "assistant", "content": None,
                       "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                      {"role": "function", "name": "get_weather", "content": "22 C"}]
    assert client.post(CHAT, json=chat(messages=messages, functions=[WEATHER["function"]])).status_code == 200
    (prompt_ids, _), = engine.requests.values()
    prompt = engine.tokenizer.decode(prompt_ids)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n22 C\n</tool_response>" in prompt


def test_parallel_tool_calls_false_keeps_one_call(monkeypatch):
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    two = CALL + "\n" + CALL.replace("Paris", "Oslo")
    with make_client(FakeEngine(max_model_len=4096, script=two)) as client:
        for parallel, cities in ((True, ["Paris", "Oslo"]), (False, ["Paris"])):
            body = client.post(CHAT, json=chat(tools=[WEATHER], temperature=0, parallel_tool_calls=parallel,
                                               max_tokens=300)).json()
            calls = body["choices"][0]["message"]["tool_calls"]
            assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == cities
            events = parse_sse(client.post(CHAT, json=chat(tools=[WEATHER], temperature=0, stream=True, max_tokens=300,
                                                           parallel_tool_calls=parallel)).text)
            check_stream(events)
            indices = {p["index"] for e in events[:-1] for c in e["choices"] for p in c["delta"].get("tool_calls", [])}
            assert indices == set(range(len(cities)))


def test_tokenize_renders_tools_as_the_chat_endpoint_does(tool_client):
    client, engine = tool_client
    assert client.post(CHAT, json=chat(tools=[WEATHER])).status_code == 200
    (prompt_ids, _), = engine.requests.values()
    r = client.post("/tokenize", json={"model": "gpt-4", "messages": MSG, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == prompt_ids


@pytest.mark.parametrize("cut", [len(CALL) + 5, len(CALL) + 40, len(CALL) + 60])
def test_a_call_cut_by_max_tokens_is_dropped_never_content(monkeypatch, cut):
    """tool_choice "required", max_tokens ending inside the second call (its tag, its name, its
    arguments): the first call stands, no markup is content, finish_reason "length"."""
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    two = CALL + "\n" + CALL.replace("Paris", "Oslo")
    with make_client(FakeEngine(max_model_len=4096, script=two)) as client:
        body = client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="required", temperature=0,
                                           max_tokens=cut)).json()
        validate(body, "CreateChatCompletionResponse")
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
        assert [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [{"city": "Paris"}]
        events = parse_sse(client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="required", temperature=0,
                                                       max_tokens=cut, stream=True)).text)
        texts = check_stream(events)
        assert "<tool_call>" not in texts[0] and texts[0].strip() == ""
        assert events[-2]["choices"][0]["finish_reason"] == "length"
