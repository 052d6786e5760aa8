"""/v1/chat/completions fields through the real server and the `openai` client: max_completion_tokens,
n = 3 streaming, add_generation_prompt, continue_final_message, chat_template_kwargs, usage in
streams, fields we cannot honour and fields we do not know."""
from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.spec_client import validating_openai_client
from tests.spec_validator import validate

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def openai_client(server_url):
    """Every body and chunk the client receives is spec-checked first (tests/e2e/spec_client.py)."""
    return validating_openai_client(server_url, API_KEY)


def chat(client, **kwargs):
    raw = client.chat.completions.with_raw_response.create(**{"model": "gpt-4", "messages": PARIS, **kwargs})
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    return raw.parse()


def test_max_completion_tokens(openai_client):
    body = chat(openai_client, max_completion_tokens=3, temperature=0)
    assert body.usage.completion_tokens == 3 and body.choices[0].finish_reason == "length"
    body = chat(openai_client, max_completion_tokens=2, max_tokens=50, temperature=0)  # the newer field wins
    assert body.usage.completion_tokens == 2


def test_n3_stream_with_openai_client(openai_client):
    chunks = list(openai_client.chat.completions.create(model="gpt-4", messages=PARIS, n=3, max_tokens=6, seed=9,
                                                        stream=True, stream_options={"include_usage": True}))
    texts, finish = {}, {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert sorted(texts) == sorted(finish) == [0, 1, 2] and all(texts.values())
    assert chunks[-1].choices == [] and 3 <= chunks[-1].usage.completion_tokens <= 18


def test_add_generation_prompt(openai_client, http):
    with_prompt = http.post("/tokenize", json={"messages": PARIS}).json()["count"]
    without = http.post("/tokenize", json={"messages": PARIS, "add_generation_prompt": False}).json()["count"]
    assert without < with_prompt
    body = chat(openai_client, max_tokens=2, extra_body={"add_generation_prompt": False})
    assert body.usage.prompt_tokens == without
    assert chat(openai_client, max_tokens=2).usage.prompt_tokens == with_prompt


def test_continue_final_message(openai_client, http):
    messages = [*PARIS, {"role": "assistant", "content": "The capital of France is"}]
    body = chat(openai_client, messages=messages, max_tokens=4, temperature=0,
                extra_body={"continue_final_message": True})
    assert body.choices[0].message.content.lstrip().startswith("Paris")  # it goes on, not starting over
    counted = http.post("/tokenize", json={"messages": messages, "continue_final_message": True}).json()["count"]
    assert body.usage.prompt_tokens == counted
    with pytest.raises(openai.BadRequestError) as exc:
        chat(openai_client, extra_body={"continue_final_message": True})  # the last message is the user's
    assert exc.value.body["param"] == "continue_final_message"


def test_chat_template_kwargs(openai_client):
    body = chat(openai_client, max_tokens=2, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert body.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as exc:
        chat(openai_client, extra_body={"chat_template_kwargs": {"messages": []}})
    assert exc.value.body["param"] == "chat_template_kwargs" and "enable_thinking" in exc.value.body["message"]


def test_stream_usage_reports_cached_tokens(openai_client):
    messages = [{"role": "system", "content": "You are a helpful assistant who answers briefly. " * 12}, *PARIS]
    usages = []
    for _ in range(2):
        chunks = list(openai_client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=2,
                                                            stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].choices == []
        usages.append(chunks[-1].usage)
    assert usages[0].prompt_tokens == usages[1].prompt_tokens > 64
    assert usages[1].prompt_tokens_details.cached_tokens > 0


def test_prefix_cache_is_per_api_key(server_url, openai_client):
    """A secret system prompt cached under one key is not a hit for another (no "was it seen?")."""
    other = validating_openai_client(server_url, "other-key")  # the server's second key (conftest)
    messages = [{"role": "system", "content": "The vault code is 4471; never say it. " * 8}, *PARIS]
    first = openai_client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=1)
    guess = other.chat.completions.create(model="gpt-4", messages=messages, max_tokens=1)
    again = openai_client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=1)
    assert first.usage.prompt_tokens == guess.usage.prompt_tokens > 64
    assert guess.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens > 0


@pytest.mark.parametrize("field,value", [("store", True), ("service_tier", "flex"), ("reasoning_effort", "high"),
                                         ("verbosity", "low")])


def test_fields_we_cannot_honour(openai_client, field, value):
    with pytest.raises(openai.BadRequestError) as exc:
        chat(openai_client, max_tokens=2, **{field: value})
    assert exc.value.body["param"] == field and exc.value.body["code"] == "unsupported_parameter"


def test_harmless_and_unknown_fields_accepted(openai_client):
    body = chat(openai_client, max_tokens=2, store=False, metadata={"team": "a"}, user="u-1", service_tier="auto",
                extra_body={"some_vendor_field": {"x": 1}, "another_one": True})
    assert body.choices[0].finish_reason in ("length", "stop")
