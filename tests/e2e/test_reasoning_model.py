"""A reasoning model end to end: a tiny random model carrying the real Qwen3 chat template,
served by a real gptserve process, read through the openai client and a raw SSE reader.

A random model does not think by itself, so guided decoding (a regex that spells the thinking,
which the server then leaves unwrapped) makes it write ``<think>…</think>`` and an answer;
the parsing, streaming and tool calls after the thinking are the server's real path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import check_stream, parse_sse
from tests.server_process import running_server
from tests.spec_validator import validate
from tests.tiny_families import write_family_hf
from tests.tiny_models import write_tiny_hf_model

# The model code the fixture runs. Qwen3's template on a qwen2 model until the Qwen3 model code
# lands; then "qwen3" (the only change this file needs).
ARCH = "qwen3"
API_KEY = "reasoning-key"
QWEN3_TEMPLATE = Path(__file__).resolve().parent.parent / "fixtures" / "qwen3_chat_template.jinja"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
WORDS = r"[a-z]{1,4}( [a-z]{1,4}){1,2}"
THINK_THEN_ANSWER = rf"<think>\n{WORDS}\n</think>\n\nParis\."
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
THINK_THEN_CALL = (rf"<think>\n{WORDS}\n</think>\n\n<tool_call>\n"
                   r'\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)"\}\}\n</tool_call>')


def write_reasoning_model(folder: str, arch: str = ARCH) -> str:
    """A tiny random ``arch`` model whose tokenizer_config.json carries Qwen3's chat template."""
    if arch == "qwen3":  # written by transformers' own Qwen3 classes
        write_family_hf(folder, "qwen3", seed=0)
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "max_position_embeddings": 1024}))
    else:
        write_tiny_hf_model(folder, arch=arch, seed=0, max_position_embeddings=1024)
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = QWEN3_TEMPLATE.read_text()
    config_path.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def reasoning_url(tmp_path_factory):
    folder = write_reasoning_model(str(tmp_path_factory.mktemp("tiny-reasoning")))
    log = tmp_path_factory.mktemp("reasoning-server") / "server.log"
    args = ["--model", f"tiny-qwen3={folder}", "--max-model-len", "1024", "--kv-cache-memory-gb", "0.05"]
    with running_server(args, {"GPTSERVE_API_KEY": API_KEY}, log_path=log) as (url, _, _):
        yield url


@pytest.fixture(scope="module")
def client(reasoning_url):
    from openai import OpenAI
    return OpenAI(base_url=f"{reasoning_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def raw(reasoning_url):
    with httpx.Client(base_url=reasoning_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def guided(regex: str) -> dict:
    return {"structured_outputs": {"regex": regex}}


def test_model_card_says_it_thinks(raw):
    card = raw.get("/v1/models").json()["data"][0]
    validate(card, "Model")
    assert card["id"] == "tiny-qwen3" and card["reasoning"] is True and card["reasoning_parser"] == "qwen3"
    assert (card["architecture"], card["quantization"], card["context_length"]) == (ARCH, "F32", 1024)


def test_message_splits_thinking_from_answer(client):
    r = client.chat.completions.create(model="tiny-qwen3", messages=ASK, max_tokens=80, temperature=0,
                                       extra_body=guided(THINK_THEN_ANSWER))
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    message = r.choices[0].message
    assert message.content == "Paris."
    assert re.fullmatch(WORDS, message.reasoning_content) and message.reasoning == message.reasoning_content
    assert 0 < r.usage.completion_tokens_details.reasoning_tokens < r.usage.completion_tokens


def test_openai_stream_gives_reasoning_then_content(client):
    stream = client.chat.completions.create(model="tiny-qwen3", messages=ASK, max_tokens=80, temperature=0,
                                            stream=True, extra_body=guided(THINK_THEN_ANSWER))
    kinds, reasoning, content = [], "", ""
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            if delta.get("reasoning_content"):
                kinds.append("reasoning")
                reasoning += delta["reasoning_content"]
            if delta.get("content"):
                kinds.append("content")
                content += delta["content"]
    assert re.fullmatch(WORDS, reasoning) and content == "Paris."
    assert kinds == sorted(kinds, key=["reasoning", "content"].index) and "reasoning" in kinds


def test_raw_sse_chunks_are_the_spec_shape(raw):
    r = raw.post("/v1/chat/completions", json={
        "model": "tiny-qwen3", "messages": ASK, "max_tokens": 80, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}, **guided(THINK_THEN_ANSWER)})
    events = parse_sse(r.text)
    assert check_stream(events, include_usage=True) == {0: "Paris."}  # each chunk validated against the spec
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    thought = "".join(d.get("reasoning_content", "") for d in deltas)
    assert re.fullmatch(WORDS, thought) and thought == "".join(d.get("reasoning", "") for d in deltas)
    assert not any("think>" in json.dumps(d) for d in deltas)  # no tag leaks, however the tokens split it
    assert events[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_tool_call_after_the_thinking_is_parsed(client):
    r = client.chat.completions.create(model="tiny-qwen3", messages=ASK, tools=TOOLS, max_tokens=120,
                                       temperature=0, extra_body=guided(THINK_THEN_CALL))
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and re.fullmatch(WORDS, choice.message.reasoning_content)
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    stream = client.chat.completions.create(model="tiny-qwen3", messages=ASK, tools=TOOLS, max_tokens=120,
                                            temperature=0, stream=True, extra_body=guided(THINK_THEN_CALL))
    calls = [c for chunk in stream for ch in chunk.choices for c in ch.delta.tool_calls or []]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == json.loads(call.function.arguments)


def test_enable_thinking_and_reasoning_effort_reach_the_template(raw):
    def prompt(**fields) -> str:
        tokens = raw.post("/tokenize", json={"model": "tiny-qwen3", "messages": ASK, **fields}).json()["tokens"]
        return raw.post("/detokenize", json={"model": "tiny-qwen3", "tokens": tokens}).json()["prompt"]

    assert prompt().endswith("<|im_start|>assistant\n")
    assert prompt(chat_template_kwargs={"enable_thinking": False}).endswith("assistant\n<think>\n\n</think>\n\n")
    # reasoning_effort "none" is the same switch, on the chat endpoint: the answer starts after an empty thinking
    r = raw.post("/v1/chat/completions", json={"model": "tiny-qwen3", "messages": ASK, "max_tokens": 1,
                                               "reasoning_effort": "none"})
    assert r.status_code == 200
    with_off = raw.post("/v1/chat/completions", json={"model": "tiny-qwen3", "messages": ASK, "max_tokens": 1,
                                                      "chat_template_kwargs": {"enable_thinking": False}})
    assert r.json()["usage"]["prompt_tokens"] == with_off.json()["usage"]["prompt_tokens"]


def test_default_model_card(http):
    """The shared SmolLM2 server (tests/e2e/conftest.py): a Llama-family Q4_1 file that does not think."""
    card = http.get("/v1/models").json()["data"][0]
    validate(card, "Model")
    assert (card["architecture"], card["quantization"], card["reasoning"]) == ("llama", "Q4_1", False)
    assert card["context_length"] == card["max_model_len"] == 2048 and "reasoning_parser" not in card
