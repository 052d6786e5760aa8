"""Tool-call rendering and parsing (server/tools.py), streamed and whole."""
import json
import random

import pytest

from server.tools import ToolCallStream, ToolSettings, parse_tool_calls, render_messages

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TWO_CALLS = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris {\\"x\\"}"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def stream_in_pieces(text: str, seed: int, names=None):
    """Feed text in random pieces; return (content, calls reassembled as the openai client does)."""
    rng = random.Random(seed)
    stream = ToolCallStream(names)
    content, calls = "", {}
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        pieces.append(text[i:i + n])
        i += n
    for piece in pieces + [None]:
        c, deltas = stream.feed(piece) if piece is not None else stream.finish()
        content += c
        for d in deltas:
            call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
            if "id" in d:
                assert call["id"] is None and d["function"]["arguments"] == ""  # id + name come first, once
                call["id"], call["name"] = d["id"], d["function"]["name"]
            else:
                assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
                call["arguments"] += d["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("seed", range(8))
def test_streamed_pieces_reassemble_to_the_calls(seed):
    content, calls = stream_in_pieces(TWO_CALLS, seed, {"get_weather", "get_time"})
    assert content == "Let me check."
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": 'Paris {"x"}'}
    assert json.loads(calls[1]["arguments"]) == {}
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]


def test_whole_text_parses_like_the_stream():
    content, calls = parse_tool_calls(TWO_CALLS, {"get_weather", "get_time"})
    assert content == "Let me check."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": 'Paris {"x"}'}), ("get_time", {})]


def test_text_without_calls_is_content_and_lookalikes_pass_through():
    for text in ("Just text.", "a < b and <tool but not a call", "ends with <tool_c"):
        assert parse_tool_calls(text) == (text, [])
        assert stream_in_pieces(text, 1) == (text, [])


def test_other_key_orders_and_unclosed_calls_still_parse():
    content, calls = parse_tool_calls('<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>')
    assert content is None and calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Oslo"}
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}')  # EOS before </tool_call>
    assert calls[0]["name"] == "get_time"


def test_bad_escapes_in_a_name_do_not_break_the_stream():
    text = '<tool_call>\n{"name": "get\\x", "arguments": {}}\n</tool_call>'
    assert stream_in_pieces(text, 0, {"get_weather"}) == (text, [])


def test_unknown_calls_stay_text_and_cut_calls_are_dropped():
    # cut short by max_tokens: never the raw markup as content, and no half call
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    assert parse_tool_calls(broken) == (None, [])
    assert parse_tool_calls("Let me see.\n" + broken) == ("Let me see.", [])
    assert parse_tool_calls('Hm.<tool_call>\n{"name": "get_wea') == ("Hm.", [])
    content, calls = parse_tool_calls(TWO_CALLS.split("get_time")[0], {"get_weather", "get_time"})
    assert content == "Let me check." and [c["name"] for c in calls] == ["get_weather"]
    unknown = '<tool_call>{"name": "launch", "arguments": {}}</tool_call>'
    assert parse_tool_calls(unknown, {"get_weather"}) == (unknown, [])


def test_render_without_template_support_uses_the_system_prompt_format():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
    ]
    out, tools = render_messages(messages, ToolSettings(tools=[WEATHER]), template_knows_tools=False)
    assert tools is None
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER) in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\n22 C, sunny\n</tool_response>"}
    none, _ = render_messages(messages, ToolSettings(tools=[WEATHER], choice="none"), template_knows_tools=False)
    assert none[0] == {"role": "system", "content": "Be brief."}  # tool_choice none: tools not offered


def test_render_with_template_support_passes_tools_through():
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    out, tools = render_messages(messages, ToolSettings(tools=[WEATHER]), template_knows_tools=True)
    assert tools == [WEATHER]
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_grammar_only_when_forced():
    assert ToolSettings(tools=[WEATHER]).grammar() is None
    named = ToolSettings(tools=[WEATHER, TIME], choice="function", function_name="get_time").grammar()
    assert named.kind == "lark" and '"get_time"' in named.value and "get_weather" not in named.value
    required = ToolSettings(tools=[WEATHER, TIME], choice="required", parallel=False).grammar()
    assert "anyOf" in required.value and "call)*" not in required.value
    assert "call)*" in ToolSettings(tools=[WEATHER], choice="required").grammar().value
