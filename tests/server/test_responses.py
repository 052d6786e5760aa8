"""Completions and chat over FakeEngine: full responses and streams, checked against the spec."""
from __future__ import annotations

import pytest

from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate

CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def test_chat_greedy(client, fake_engine):
    r = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0})
    assert r.status_code == 200
    body = validate(r.json(), "CreateChatCompletionResponse")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The capital of France is Paris.", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "SmolLM2-135M-Instruct"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    (prompt_ids, params), = fake_engine.requests.values()
    assert params.temperature == 0 and params.max_tokens is None  # omitted = the rest of the context


def test_chat_content_parts_developer_role_and_alias(client, fake_engine):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    r = client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": messages, "max_completion_tokens": 3})
    body = validate(r.json(), "CreateChatCompletionResponse")
    assert body["model"] == "gpt-4" and body["choices"][0]["finish_reason"] == "length"
    (prompt_ids, params), = fake_engine.requests.values()
    prompt = fake_engine.tokenizer.decode(prompt_ids)
    assert "<|im_start|>system\nBe brief." in prompt and "Hi\nthere" in prompt and params.max_tokens == 3


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(client, include_usage):
    r = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0, "stream": True,
                                                  "stream_options": {"include_usage": include_usage}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    texts = check_stream(events, include_usage=include_usage)
    assert texts == {0: "The capital of France is Paris."}
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = [c for c in events[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["delta"] == {}


def test_chat_stream_n3(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "n": 3, "seed": 1, "max_tokens": 5, "stream": True})
    texts = check_stream(parse_sse(r.text), n=3)
    assert sorted(texts) == [0, 1, 2] and all(len(t) == 5 for t in texts.values())


def test_completion_prompt_forms(client, fake_engine):
    for prompt, num_prompts in [("Hello", 1), (["a", "b"], 2), ([72, 105], 1), ([[72], [73, 74]], 2)]:
        r = client.post("/v1/completions", json={"model": "davinci-codex", "prompt": prompt, "n": 2,
                                                 "max_tokens": 4, "temperature": 0})
        body = validate(r.json(), "CreateCompletionResponse")
        assert [c["index"] for c in body["choices"]] == list(range(2 * num_prompts))
        assert all(c["text"] == "The " and c["finish_reason"] == "length" for c in body["choices"])
        assert body["usage"]["completion_tokens"] == 8 * num_prompts


def test_completion_stream_n_and_stop(client):
    r = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x", "n": 3, "temperature": 0,
                                             "stop": ["p", "zz"], "stream": True, "stream_options": {"include_usage": True}})
    texts = check_stream(parse_sse(r.text), n=3, include_usage=True)
    assert texts == {i: "The ca" for i in range(3)}  # the stop string itself is not returned


def test_seed_same_text(client):
    def run(seed):
        r = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x", "seed": seed,
                                                 "temperature": 1, "max_tokens": 20})
        return validate(r.json(), "CreateCompletionResponse")["choices"][0]["text"]
    assert run(7) == run(7) != run(8)


def test_sampling_params_passed(client, fake_engine):
    client.post("/v1/completions", json={
        "model": "gpt-4", "prompt": "x", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
        "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
        "logit_bias": {"65": 5}, "stop": "zz", "seed": 3, "ignore_eos": True, "min_tokens": 2,
        "stop_token_ids": [9], "user": "u1", "best_of": 1, "echo": False, "logprobs": None, "suffix": None})
    (_, params), = fake_engine.requests.values()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.5, 0.9, 40, 0.1)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.5, 1.1)
    assert params.logit_bias == {65: 5.0} and params.stop == ["zz"] and params.seed == 3
    assert params.ignore_eos and params.min_tokens == 2 and params.stop_token_ids == [9]


def test_models(client):
    body = validate(client.get("/v1/models").json(), "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == ["SmolLM2-135M-Instruct", "davinci-codex", "gpt-4"]
    assert validate(client.get("/v1/models/gpt-4").json(), "Model")["id"] == "gpt-4"


def test_legacy_engine_routes(client):
    r = client.post("/v1/engines/davinci-codex/completions", json={"prompt": "x", "max_tokens": 3, "stop": None})
    assert validate(r.json(), "CreateCompletionResponse")["model"] == "davinci-codex"
    r = client.post("/v1/engines/gpt-4/chat/completions", json={"messages": CHAT["messages"], "max_tokens": 3})
    assert validate(r.json(), "CreateChatCompletionResponse")["model"] == "gpt-4"


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
