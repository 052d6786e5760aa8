"""Reasoning output: the <think> parser on token streams, and the real serving path over
FakeEngine scripts (message.reasoning_content, stream deltas, usage, tools after the thinking)."""
from __future__ import annotations

import pytest

from server.reasoning import (ReasoningStream, reasoning_parser_for, split_reasoning, starts_in_thinking,
                              thinking_kwargs)
from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
THOUGHT = "The user asks about France.\nIts capital is Paris."
SCRIPT = f"<think>\n{THOUGHT}\n</think>\n\nParis."
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def feed_in_pieces(text: str, size: int, is_thinking: bool = False) -> tuple[list[str], list[str], ReasoningStream]:
    stream = ReasoningStream(is_thinking)
    thoughts, answers = [], []
    for i in range(0, len(text), size):
        r, c = stream.feed(text[i:i + size], num_tokens=i + size)
        thoughts.append(r)
        answers.append(c)
    r, c = stream.finish(num_tokens=len(text))
    return thoughts + [r], answers + [c], stream


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 100])
def test_tags_split_across_tokens_never_leak(size):
    thoughts, answers, stream = feed_in_pieces(SCRIPT, size)
    assert "".join(thoughts) == THOUGHT and "".join(answers) == "Paris."
    assert not any("<" in t or ">" in t for t in thoughts + answers)
    # no thinking after the piece that starts the answer (that piece may end the thinking)
    first_answer = next(i for i, a in enumerate(answers) if a)
    assert not any(thoughts[first_answer + 1:])
    # the tokens up to and including the piece that completed </think>
    assert stream.num_reasoning_tokens == -(-(SCRIPT.index("</think>") + len("</think>")) // size) * size


@pytest.mark.parametrize("text,is_thinking,expected", [
    ("Paris.", False, (None, "Paris.")),  # never thinks: all answer
    ("  \n<think>a</think>b", False, ("a", "b")),  # white space before <think>
    ("a <think> b", False, (None, "a <think> b")),  # <think> not at the start is text
    (f"{THOUGHT}\n</think>\n\nParis.", True, (THOUGHT, "Paris.")),  # the prompt opened <think> (R1)
    ("still thinking", True, ("still thinking", "")),  # cut off (length) inside the thinking
    ("<think>\n\n</think>\n\nParis.", False, ("", "Paris.")),  # an empty thinking
    ("<thi", False, (None, "<thi")),  # a lone tag prefix at the end is text
    ("</think> x", False, (None, "</think> x")),
])
def test_split_reasoning(text, is_thinking, expected):
    assert split_reasoning(text, is_thinking) == expected


def test_prompt_decides_where_the_output_starts():
    assert starts_in_thinking("<|im_start|>assistant\n<think>\n")
    assert not starts_in_thinking("<|im_start|>assistant\n")
    assert not starts_in_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking false


def test_parser_choice():
    assert reasoning_parser_for("auto", "{{ '<think>' }}{{ '</think>' }}") == "qwen3"
    assert reasoning_parser_for("auto", "<｜Assistant｜><think>\n</think>") == "deepseek_r1"
    assert reasoning_parser_for("auto", "{{ messages }}") is None
    assert reasoning_parser_for("none", "<think></think>") is None
    assert reasoning_parser_for("deepseek_r1", None) == "deepseek_r1"
    with pytest.raises(ValueError):
        reasoning_parser_for("bogus", None)


def test_reasoning_effort_onto_enable_thinking():
    qwen3 = "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    assert thinking_kwargs(qwen3, "none", {}) == {"enable_thinking": False}
    assert thinking_kwargs(qwen3, "high", {}) == {"enable_thinking": True}
    assert thinking_kwargs(qwen3, "none", {"enable_thinking": True}) == {"enable_thinking": True}  # explicit wins
    assert thinking_kwargs("{{ reasoning_effort }}", "low", {}) == {"reasoning_effort": "low"}
    assert thinking_kwargs(qwen3, None, {"x": 1}) == {"x": 1}


# ----- through the server (FakeEngine speaks the script, greedy) -----

def reasoning_client(script: str, parser: str = "qwen3", opens_think: bool = False):
    engine = FakeEngine(max_model_len=2048, script=script)
    if opens_think:  # a template whose generation prompt opens <think> (DeepSeek-R1 distills)
        render = engine.tokenizer.apply_chat_template
        engine.tokenizer.apply_chat_template = lambda *a, **k: render(*a, **k) + "<think>\n"
    return engine, make_client(engine, reasoning_parser=parser)


def test_message_carries_reasoning_apart_from_content():
    engine, client = reasoning_client(SCRIPT)
    with client:
        body = client.post(CHAT, json={"messages": ASK, "temperature": 0}).json()
    validate(body, "CreateChatCompletionResponse")
    message = body["choices"][0]["message"]
    assert message["content"] == "Paris."
    assert message["reasoning_content"] == message["reasoning"] == THOUGHT
    usage = body["usage"]
    thinking_tokens = len(SCRIPT.encode()) - len("\n\nParis.")  # the fake's tokens are bytes
    assert usage["completion_tokens_details"] == {"reasoning_tokens": thinking_tokens}
    assert usage["completion_tokens"] == len(SCRIPT.encode()) + 1  # and the end-of-turn token


def stream_deltas(client, **body) -> tuple[list[dict], list]:
    r = client.post(CHAT, json={"messages": ASK, "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}, **body})
    events = parse_sse(r.text)
    check_stream(events, include_usage=True)  # every chunk valid against the spec
    return [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]], events


def test_stream_sends_reasoning_deltas_then_content():
    engine, client = reasoning_client(SCRIPT)
    with client:
        deltas, events = stream_deltas(client)
    kinds = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert kinds.index("content") == len(kinds) - kinds[::-1].index("reasoning_content")  # reasoning, then content
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == "Paris."
    assert events[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_prompt_that_opens_think_starts_in_reasoning():
    engine, client = reasoning_client(f"{THOUGHT}\n</think>\n\nParis.", parser="deepseek_r1", opens_think=True)
    with client:
        message = client.post(CHAT, json={"messages": ASK, "temperature": 0}).json()["choices"][0]["message"]
        deltas, _ = stream_deltas(client)
    assert (message["reasoning_content"], message["content"]) == (THOUGHT, "Paris.")
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT


def test_parser_none_leaves_the_thinking_in_content():
    engine, client = reasoning_client(SCRIPT, parser="none")
    with client:
        message = client.post(CHAT, json={"messages": ASK, "temperature": 0}).json()["choices"][0]["message"]
        card = client.get("/v1/models").json()["data"][0]
    assert message["content"] == SCRIPT and "reasoning_content" not in message
    assert card["reasoning"] is False


def test_tool_call_after_the_thinking_is_parsed_and_one_inside_it_is_not():
    script = f"<think>\nMaybe {CALL} would help.\n</think>\n\n{CALL}"
    engine, client = reasoning_client(script)
    with client:
        body = client.post(CHAT, json={"messages": ASK, "temperature": 0, "tools": TOOLS}).json()
        deltas, _ = stream_deltas(client, tools=TOOLS)
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == f"Maybe {CALL} would help."
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    streamed = [c for d in deltas for c in d.get("tool_calls") or []]
    assert streamed[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"].get("arguments", "") for c in streamed) == '{"city": "Paris"}'
    assert "".join(d.get("reasoning_content", "") for d in deltas) == f"Maybe {CALL} would help."


def test_reasoning_effort_needs_a_reasoning_model():
    engine, client = reasoning_client(SCRIPT, parser="none")
    with client:
        check_error(client.post(CHAT, json={"messages": ASK, "reasoning_effort": "high"}), 400,
                    code="unsupported_parameter", param="reasoning_effort")
    engine, client = reasoning_client(SCRIPT)
    with client:
        r = client.post(CHAT, json={"messages": ASK, "reasoning_effort": "high", "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["reasoning_content"] == THOUGHT


def test_history_reasoning_reaches_the_template():
    engine, client = reasoning_client("ok")
    seen = []
    render = engine.tokenizer.apply_chat_template
    engine.tokenizer.apply_chat_template = lambda messages, *a, **k: seen.append(messages) or render(messages, *a, **k)
    history = [*ASK, {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT},
               {"role": "user", "content": "And Italy?"}]
    with client:
        assert client.post(CHAT, json={"messages": history, "max_tokens": 1}).status_code == 200
    assert seen[-1][1] == {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT}


# ----- grammars after the thinking (llguidance, on a real tokenizer) -----

@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    from engine import Tokenizer
    from server.structured import StructuredOutput
    from tests.tiny_models import make_tiny_tokenizer_files

    tokenizer = Tokenizer.load(make_tiny_tokenizer_files(str(tmp_path_factory.mktemp("tok"))))
    return StructuredOutput(tokenizer, tokenizer.vocab_size), tokenizer


def accepts(structured, spec, thinking: str | None, text: str) -> bool:
    so, tokenizer = structured
    guide = so.guide(spec, thinking)
    return all(guide.accept(t) for t in tokenizer.encode(text, add_special_tokens=False)) and \
        guide.matcher.is_accepting()


@pytest.mark.parametrize("thinking,text,ok", [
    ("may_open", '<think>\nIt wants {"a": 2}.\n</think>\n\n{"a": 1}', True),  # JSON in the thinking is free text
    ("may_open", '{"a": 1}', True),  # a model may answer without thinking
    ("may_open", 'Sure: {"a": 1}', False),  # but the answer itself is held to the schema
    ("inside", 'It wants a one.\n</think>\n\n{"a": 1}', True),  # the prompt opened <think>
    ("inside", '{"a": 1}', False),  # still thinking: not finished
    (None, '<think>x</think>{"a": 1}', False),  # a model that does not reason: the schema from the start
])
def test_structured_output_holds_after_the_thinking(structured, thinking, text, ok):
    from server.structured import GrammarSpec

    spec = GrammarSpec("json", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                       "response_format")
    assert accepts(structured, spec, thinking, text) is ok


def test_a_grammar_that_spells_the_thinking_is_used_as_given(structured):
    from server.structured import GrammarSpec

    spec = GrammarSpec("regex", r"<think>\n[a-z]+\n</think>\n\nParis\.", "structured_outputs")
    assert accepts(structured, spec, "may_open", "<think>\nhmm\n</think>\n\nParis.")
    assert not accepts(structured, spec, "may_open", "Paris.")


def test_model_card_says_whether_the_model_thinks():
    engine, client = reasoning_client(SCRIPT)
    engine.quantization = "Q4_K"
    with client:
        card = client.get("/v1/models/gpt-4").json()
    validate(card, "Model")
    assert (card["reasoning"], card["reasoning_parser"], card["quantization"]) == (True, "qwen3", "Q4_K")
    assert card["context_length"] == card["max_model_len"] == engine.max_model_len
    engine, client = reasoning_client(SCRIPT, parser="none")
    with client:
        card = client.get("/v1/models/gpt-4").json()
    assert card["reasoning"] is False and "reasoning_parser" not in card
