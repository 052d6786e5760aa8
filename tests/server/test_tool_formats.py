"""Tool calls in auto mode in each family's format (hermes, Llama 3 JSON, Mistral), through the
real serving path over FakeEngine scripts, streamed and whole."""
from __future__ import annotations

import json

import pytest

from server.tool_formats import parse_json_calls, tool_format_for
from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate

CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "Weather in Paris and Rome?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# what each family's chat template says (trimmed to the parts the format is read from)
LLAMA3_TEMPLATE = ('{% if tools %}Respond in the format {"name": function name, "parameters": dictionary}'
                   '{% endif %}<|start_header_id|>assistant<|end_header_id|>{{ "<|python_tag|>" }}')
MISTRAL_TEMPLATE = "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
QWEN_TEMPLATE = "{% if tools %}<tools>{{ tools }}</tools> <tool_call></tool_call>{% endif %}<|im_start|>"


@pytest.mark.parametrize("template,fmt", [(LLAMA3_TEMPLATE, "llama3"), (MISTRAL_TEMPLATE, "mistral"),
                                          (QWEN_TEMPLATE, "hermes"), ("{{ messages }}", "hermes"), (None, "hermes")])
def test_format_from_template(template, fmt):
    assert tool_format_for(template) == fmt


@pytest.mark.parametrize("text,fmt,expected", [
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "llama3", [("get_weather", {"city": "Paris"})]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
     '{"name": "get_weather", "parameters": {"city": "Rome"}}', "llama3",
     [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]', "mistral", [("get_weather", {"city": "Rome"})]),
    ('[{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]', "mistral", [("get_weather", {"city": "Rome"})]),
    ('{"name": "unknown_tool", "parameters": {}}', "llama3", None),  # not one of the request's tools
    ('{"answer": 42}', "llama3", None),
    ('[1, 2, 3]', "mistral", None),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}} and then some words', "llama3", None),
])
def test_parse_json_calls(text, fmt, expected):
    assert parse_json_calls(text, fmt, {"get_weather"}) == expected


def serve(template: str, script: str):
    engine = FakeEngine(max_model_len=2048, script=script)
    engine.tokenizer.chat_template = template
    return make_client(engine)


def ask(client, stream: bool = False, **extra):
    body = {"messages": ASK, "temperature": 0, "tools": TOOLS, "stream": stream, **extra}
    r = client.post(CHAT, json=body)
    if not stream:
        return validate(r.json(), "CreateChatCompletionResponse")["choices"][0]
    events = parse_sse(r.text)
    check_stream(events)
    return [e["choices"][0] for e in events[:-1]]


LLAMA3_CALLS = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                '{"name": "get_weather", "parameters": {"city": "Rome"}}')
MISTRAL_CALLS = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                 '{"name": "get_weather", "arguments": {"city": "Rome"}}]')


@pytest.mark.parametrize("template,script", [(LLAMA3_TEMPLATE, LLAMA3_CALLS), (MISTRAL_TEMPLATE, MISTRAL_CALLS),
                                             (LLAMA3_TEMPLATE, LLAMA3_CALLS.removeprefix("<|python_tag|>")),
                                             (MISTRAL_TEMPLATE, MISTRAL_CALLS.removeprefix("[TOOL_CALLS]"))])
def test_auto_mode_parses_the_family_format(template, script):
    with serve(template, script) as client:
        choice = ask(client)
        chunks = ask(client, stream=True)
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    cities = [json.loads(c["function"]["arguments"])["city"] for c in choice["message"]["tool_calls"]]
    assert cities == ["Paris", "Rome"]
    deltas = [c for ch in chunks for c in ch["delta"].get("tool_calls") or []]
    by_index: dict[int, str] = {}
    for d in deltas:
        by_index[d["index"]] = by_index.get(d["index"], "") + d["function"].get("arguments", "")
    assert [json.loads(a)["city"] for _, a in sorted(by_index.items())] == ["Paris", "Rome"]
    assert chunks[-1]["finish_reason"] == "tool_calls"
    assert not any(ch["delta"].get("content") for ch in chunks)  # the markers never show as text


@pytest.mark.parametrize("template,script", [(LLAMA3_TEMPLATE, '{"answer": 42} is JSON.'),
                                             (MISTRAL_TEMPLATE, "[1, 2] is a list."),
                                             (LLAMA3_TEMPLATE, "It is sunny in Paris.")])
def test_text_that_only_looks_like_a_call_stays_content(template, script):
    with serve(template, script) as client:
        choice = ask(client)
        chunks = ask(client, stream=True)
    assert choice["message"]["content"] == script and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert "".join(ch["delta"].get("content") or "" for ch in chunks) == script


def test_forced_call_is_read_in_the_grammar_form():
    """tool_choice "required" constrains the output to the hermes form, whatever the family."""
    script = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    with serve(LLAMA3_TEMPLATE, script) as client:
        choice = ask(client, tool_choice="required")
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
