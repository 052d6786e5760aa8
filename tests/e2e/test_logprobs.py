"""Logprobs through the real server and the real `openai` client: the spec's shapes, in full
responses and chunk by chunk in streams, and numbers that agree with the greedy choice."""
from __future__ import annotations

import math

import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.spec_client import validating_openai_client
from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def openai_client(server_url):
    """Every body and chunk the client receives is spec-checked first (tests/e2e/spec_client.py)."""
    return validating_openai_client(server_url, API_KEY)


def test_chat_logprobs(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="gpt-4", messages=PARIS, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    content = choice.logprobs.content
    # every token but the end-of-turn one, which adds no text
    assert len(content) == raw.parse().usage.completion_tokens - (choice.finish_reason == "stop") > 4
    assert "".join(t.token for t in content) == choice.message.content
    assert bytes(b for t in content for b in t.bytes).decode() == choice.message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token and math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-4)


def test_chat_logprobs_streamed_match_full(openai_client):
    args = dict(model="gpt-4", messages=PARIS, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    full = openai_client.chat.completions.create(**args).choices[0]
    chunks = list(openai_client.chat.completions.create(**args, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in full.logprobs.content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-3) for a, b in zip(streamed, full.logprobs.content))
    # each chunk carries the logprobs of the tokens it brings, no more
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            assert c.choices[0].logprobs is not None


def test_chat_logprobs_raw_stream_validates(http):
    r = http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": PARIS, "max_tokens": 6, "n": 2,
                                                "logprobs": True, "top_logprobs": 1, "stream": True, "seed": 3})
    events = parse_sse(r.text)
    check_stream(events, n=2)  # every chunk validated against the spec
    assert sum(len(c["choices"][0]["logprobs"]["content"]) for c in events[:-1]
               if c["choices"] and c["choices"][0]["logprobs"]) == 12


def test_completion_logprobs(openai_client):
    raw = openai_client.completions.with_raw_response.create(
        model="davinci-codex", prompt="The capital of France is", temperature=0, max_tokens=6, logprobs=2)
    validate(raw.http_response.json(), "CreateCompletionResponse")
    choice = raw.parse().choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 2 <= len(top) <= 3 and token in top  # the 2 best, and the chosen one always
        assert math.isclose(max(top.values()), logprob, abs_tol=1e-4)  # greedy took the best


def test_completion_logprobs_streamed(openai_client):
    args = dict(model="davinci-codex", prompt="1, 2, 3,", temperature=0, max_tokens=8, logprobs=1)
    full = openai_client.completions.create(**args).choices[0]
    chunks = list(openai_client.completions.create(**args, stream=True))
    pieces = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in pieces for t in p.tokens] == full.logprobs.tokens
    assert [o for p in pieces for o in p.text_offset] == full.logprobs.text_offset


@pytest.mark.parametrize("n", [1, 3])
def test_completion_logprobs_raw_stream_validates(http, n):
    r = http.post("/v1/completions", json={"model": "gpt-4", "prompt": "Once upon a time", "max_tokens": 5, "n": n,
                                           "logprobs": 3, "stream": True, "seed": 1})
    events = parse_sse(r.text)
    texts = check_stream(events, n=n)
    for i in range(n):
        tokens = [t for c in events[:-1] for ch in c["choices"] if ch["index"] == i and ch["logprobs"]
                  for t in ch["logprobs"]["tokens"]]
        assert "".join(tokens) == texts[i]


def test_echo_with_prompt_logprobs(openai_client, http):
    prompt = "The capital of France is"
    num_prompt = http.post("/tokenize", json={"prompt": prompt}).json()["count"]
    raw = openai_client.completions.with_raw_response.create(
        model="gpt-4", prompt=prompt, echo=True, logprobs=1, max_tokens=3, temperature=0)
    validate(raw.http_response.json(), "CreateCompletionEchoResponse")
    choice = raw.parse().choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(lp.tokens) == num_prompt + 3
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[num_prompt] == len(prompt)
    # the prompt's logprobs are the model's, not made up: " Paris" after the prompt is likely
    plain = openai_client.completions.create(model="gpt-4", prompt=prompt, logprobs=1, max_tokens=3, temperature=0)
    assert lp.tokens[num_prompt:] == plain.choices[0].logprobs.tokens


def test_echo_max_tokens_0_scores_the_prompt(openai_client):
    """The scoring idiom (lm-eval style): the prompt's logprobs, nothing generated."""
    prompt = "The capital of France is Paris"
    raw = openai_client.completions.with_raw_response.create(
        model="gpt-4", prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    validate(raw.http_response.json(), "CreateCompletionEchoResponse")
    body = raw.parse()
    lp = body.choices[0].logprobs
    assert body.choices[0].text == prompt == "".join(lp.tokens) and body.usage.completion_tokens == 0
    likely = openai_client.completions.create(model="gpt-4", prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    unlikely = openai_client.completions.create(model="gpt-4", prompt="The capital of France is Tokyo", echo=True,
                                                logprobs=0, max_tokens=0)
    assert likely.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs, abs=1e-4)
    assert lp.token_logprobs[-1] > unlikely.choices[0].logprobs.token_logprobs[-1]  # the model knows its capitals
