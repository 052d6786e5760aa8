"""Request fields over FakeEngine: logprobs, echo, best_of, suffix, chat template
switches, usage details, unknown fields, /tokenize and /detokenize. Every body is spec-checked."""
from __future__ import annotations

import logging

import openai
import pytest

from tests.server.conftest import make_client
from tests.server.fake_engine import ALTERNATIVES, EOS, OFFSET, fake_logprob
from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

CHAT, COMP = "/v1/chat/completions", "/v1/completions"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
SCRIPT = "The capital of France is Paris."


def token_id(char: str) -> int:
    return OFFSET + ord(char)


def test_completion_logprobs_shape(client, fake_engine):
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "max_tokens": 5, "temperature": 0, "logprobs": 2})
    choice = validate(r.json(), "CreateCompletionResponse")["choices"][0]
    assert choice["text"] == "The c"
    lp = choice["logprobs"]
    assert lp["tokens"] == list("The c") and lp["text_offset"] == [0, 1, 2, 3, 4]
    assert lp["token_logprobs"] == [fake_logprob(token_id(c), q) for q, c in enumerate("The c")]
    # the two best alternatives, plus the sampled token when it is not among them (the spec: k + 1)
    assert lp["top_logprobs"][0] == {"e": -0.1, "t": -0.2, "T": lp["token_logprobs"][0]}
    assert lp["top_logprobs"][1] == {"e": -0.1, "t": -0.2, "h": lp["token_logprobs"][1]}
    (_, params), = fake_engine.requests.values()
    assert params.logprobs == 2 and params.prompt_logprobs is None


def test_completion_logprobs_stream_chunk_by_chunk(client):
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "max_tokens": 4, "temperature": 0, "logprobs": 0,
                                "n": 2, "stream": True})
    events = parse_sse(r.text)
    check_stream(events, n=2)
    for i in range(2):
        pieces = [c["choices"][0] for c in events[:-1] if c["choices"][0]["index"] == i and c["choices"][0]["text"]]
        assert [p["text"] for p in pieces] == list("The ")
        assert [p["logprobs"]["tokens"] for p in pieces] == [[c] for c in "The "]
        assert [p["logprobs"]["text_offset"] for p in pieces] == [[0], [1], [2], [3]]  # counting across chunks
        assert all(len(p["logprobs"]["top_logprobs"][0]) == 1 for p in pieces)  # logprobs=0: the sampled token


def test_end_of_turn_token_has_no_logprob(client):
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "temperature": 0, "logprobs": 1})
    choice = validate(r.json(), "CreateCompletionResponse")["choices"][0]
    assert choice["finish_reason"] == "stop" and "".join(choice["logprobs"]["tokens"]) == choice["text"] == SCRIPT


def test_partial_utf8_token_strings_and_bytes(fake_engine, client):
    fake_engine.script = "é!"  # two byte tokens make one character
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "temperature": 0, "logprobs": True})
    choice = validate(r.json(), "CreateChatCompletionResponse")["choices"][0]
    content = choice["logprobs"]["content"]
    assert [c["bytes"] for c in content] == [[0xC3], [0xA9], [ord("!")]]
    assert [c["token"] for c in content] == ["bytes:\\xc3", "bytes:\\xa9", "!"]
    assert bytes(b for c in content for b in c["bytes"]).decode() == choice["message"]["content"] == "é!"
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "temperature": 0, "logprobs": 0})
    lp = validate(r.json(), "CreateCompletionResponse")["choices"][0]["logprobs"]
    assert lp["text_offset"] == [0, 0, 1]  # both halves of "é" start at character 0


def test_chat_logprobs_and_top_logprobs(client, fake_engine):
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "temperature": 0, "max_tokens": 3,
                                "logprobs": True, "top_logprobs": 3})
    choice = validate(r.json(), "CreateChatCompletionResponse")["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert [c["token"] for c in content] == ["T", "h", "e"]
    assert [c["logprob"] for c in content] == [fake_logprob(token_id(c), q) for q, c in enumerate("The")]
    assert content[0]["bytes"] == [ord("T")]
    assert content[0]["top_logprobs"] == [{"token": chr(t - OFFSET), "logprob": -0.1 * (rank + 1), "bytes": [t - OFFSET]}
                                          for rank, t in enumerate(ALTERNATIVES[:3])]
    (_, params), = fake_engine.requests.values()
    assert params.logprobs == 3


def test_chat_logprobs_stream(client):
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "temperature": 0, "max_tokens": 4,
                                "logprobs": True, "top_logprobs": 1, "stream": True})
    events = parse_sse(r.text)
    check_stream(events)
    pieces = [c["choices"][0] for c in events[:-1] if c["choices"][0]["delta"].get("content")]
    assert [p["delta"]["content"] for p in pieces] == list("The ")
    assert [[t["token"] for t in p["logprobs"]["content"]] for p in pieces] == [[c] for c in "The "]
    assert all(len(p["logprobs"]["content"][0]["top_logprobs"]) == 1 for p in pieces)


def test_chat_without_logprobs_sends_null(client, fake_engine):
    body = validate(client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "max_tokens": 2}).json(),
                    "CreateChatCompletionResponse")
    assert body["choices"][0]["logprobs"] is None
    (_, params), = fake_engine.requests.values()
    assert params.logprobs is None


def test_echo_with_prompt_logprobs(client, fake_engine):
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "Hi", "max_tokens": 2, "temperature": 0, "echo": True,
                                "logprobs": 1})
    choice = validate(r.json(), "CreateCompletionEchoResponse")["choices"][0]
    assert choice["text"] == "HiTh"
    lp = choice["logprobs"]
    # FakeTokenizer puts BOS first: it spells nothing
    assert lp["tokens"] == ["", "H", "i", "T", "h"] and lp["text_offset"] == [0, 0, 1, 2, 3]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing predicts the first
    assert lp["token_logprobs"][1:3] == [fake_logprob(token_id(c), q) for q, c in enumerate("Hi")]
    (_, params), = fake_engine.requests.values()
    assert params.prompt_logprobs == 1


def test_echo_without_logprobs_and_streamed(client, fake_engine):
    body = validate(client.post(COMP, json={"model": "gpt-4", "prompt": ["A", "B"], "max_tokens": 2, "temperature": 0,
                                            "echo": True}).json(), "CreateCompletionResponse")
    assert [c["text"] for c in body["choices"]] == ["ATh", "BTh"]
    assert all(c["logprobs"] is None for c in body["choices"])
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "A", "max_tokens": 2, "temperature": 0, "echo": True,
                                "n": 2, "stream": True})
    events = parse_sse(r.text)
    assert check_stream(events, n=2) == {0: "ATh", 1: "ATh"}
    assert [c["choices"][0]["text"] for c in events[:2]] == ["A", "A"]  # the prompt comes first
    assert all(params.prompt_logprobs is None for _, params in fake_engine.requests.values())


def test_best_of_returns_the_best_by_summed_logprob(client, fake_engine):
    common = {"model": "gpt-4", "prompt": "x", "max_tokens": 6, "seed": 11, "temperature": 1, "logprobs": 0}
    every = validate(client.post(COMP, json={**common, "n": 5}).json(), "CreateCompletionResponse")["choices"]
    totals = {c["text"]: sum(c["logprobs"]["token_logprobs"]) for c in every}
    best = validate(client.post(COMP, json={**common, "n": 2, "best_of": 5}).json(), "CreateCompletionResponse")
    assert [c["index"] for c in best["choices"]] == [0, 1]
    assert [c["text"] for c in best["choices"]] == sorted(totals, key=lambda t: -totals[t])[:2]
    assert best["usage"]["completion_tokens"] == 5 * 6  # every candidate was generated
    params = [p for _, p in fake_engine.requests.values()]
    assert params[-1].n == 5


def test_best_of_without_logprobs_hides_them(client, fake_engine):
    body = client.post(COMP, json={"model": "gpt-4", "prompt": ["x", "y"], "max_tokens": 3, "best_of": 3}).json()
    validate(body, "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1] and all(c["logprobs"] is None for c in body["choices"])
    assert all(p.logprobs == 0 and p.n == 3 for _, p in fake_engine.requests.values())  # asked, for ranking


def test_suffix_with_fim_tokens(client, fake_engine, monkeypatch):
    fim = {"<fim_prefix>": [250], "<fim_suffix>": [251], "<fim_middle>": [252]}
    encode = fake_engine.tokenizer.encode
    monkeypatch.setattr(fake_engine.tokenizer, "encode",
                        lambda text, add_special_tokens=True: fim.get(text) or encode(text, add_special_tokens))
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "ab", "suffix": "z", "max_tokens": 2})
    validate(r.json(), "CreateCompletionResponse")
    (prompt_ids, _), = fake_engine.requests.values()
    assert prompt_ids == [250, token_id("a"), token_id("b"), 251, token_id("z"), 252]


def test_continue_final_message_and_generation_prompt(client, fake_engine):
    messages = [*PARIS, {"role": "assistant", "content": "The capital is"}]
    client.post(CHAT, json={"model": "gpt-4", "messages": messages, "continue_final_message": True, "max_tokens": 1})
    client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "add_generation_prompt": False, "max_tokens": 1})
    (continued, _), (plain, _) = fake_engine.requests.values()
    assert fake_engine.tokenizer.decode(continued).endswith("<|im_start|>assistant\nThe capital is")
    assert fake_engine.tokenizer.decode(plain).endswith("France?<|im_end|>\n")


def test_chat_template_kwargs_reach_the_template(client, fake_engine, monkeypatch):
    seen = {}
    apply = fake_engine.tokenizer.apply_chat_template

    def spy(messages, add_generation_prompt=True, tools=None, **kwargs):
        seen.update(kwargs)
        return apply(messages, add_generation_prompt, tools)

    monkeypatch.setattr(fake_engine.tokenizer, "apply_chat_template", spy)
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "max_tokens": 1,
                                "chat_template_kwargs": {"enable_thinking": False}})
    assert r.status_code == 200 and seen == {"enable_thinking": False}


def test_usage_cached_tokens(client, fake_engine):
    fake_engine.num_cached_tokens = 16
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "max_tokens": 2, "stream": True,
                                "stream_options": {"include_usage": True}})
    events = parse_sse(r.text)
    check_stream(events, include_usage=True)
    assert events[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    body = client.post(COMP, json={"model": "gpt-4", "prompt": ["a", "b"], "max_tokens": 2}).json()
    assert validate(body, "CreateCompletionResponse")["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}


@pytest.mark.parametrize("field,value", [("store", True), ("service_tier", "priority"), ("verbosity", "high"),
                                         ("reasoning_effort", "high"), ("web_search_options", {}),
                                         ("prompt_cache_retention", "24h"), ("audio", {"voice": "x"})])
def test_fields_we_cannot_honour_are_named(client, fake_engine, field, value):
    if value == {}:
        value = {"search_context_size": "low"}
    body = check_error(client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, field: value}), 400,
                       code="unsupported_parameter", param=field)
    assert field in body["error"]["message"] and not fake_engine.requests


def test_harmless_fields_accepted(client):
    r = client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "max_tokens": 1, "store": False,
                                "metadata": {"a": "b"}, "service_tier": "auto", "user": "u", "safety_identifier": "s",
                                "prompt_cache_key": "k", "reasoning_effort": "none", "stream_options": None,
                                "modalities": ["text"]})
    validate(r.json(), "CreateChatCompletionResponse")


def test_unknown_fields_ignored_and_logged_once(client, caplog):
    caplog.set_level(logging.WARNING, logger="gptserve.server")
    for _ in range(2):
        r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "max_tokens": 1, "made_up_field_xyz": 1})
        validate(r.json(), "CreateCompletionResponse")
    logged = [rec for rec in caplog.records if "made_up_field_xyz" in rec.getMessage()]
    assert len(logged) == 1


def test_tokenize_prompt_and_messages(client, fake_engine):
    body = client.post("/tokenize", json={"model": "gpt-4", "prompt": "Hi", "return_token_strs": True}).json()
    assert body == {"count": 3, "max_model_len": fake_engine.max_model_len, "tokens": [0, token_id("H"), token_id("i")],
                    "token_strs": ["", "H", "i"]}
    body = client.post("/tokenize", json={"prompt": "Hi", "add_special_tokens": False}).json()
    assert body["tokens"] == [token_id("H"), token_id("i")] and "token_strs" not in body
    body = client.post("/tokenize", json={"model": "gpt-4", "messages": PARIS}).json()
    text = fake_engine.tokenizer.decode(body["tokens"])
    assert text.endswith("<|im_start|>assistant\n") and body["count"] == len(body["tokens"])
    body = client.post("/tokenize", json={"messages": PARIS, "add_generation_prompt": False}).json()
    assert fake_engine.tokenizer.decode(body["tokens"]).endswith("<|im_end|>\n")
    # what /tokenize counts is what the chat endpoint sends the engine
    client.post(CHAT, json={"model": "gpt-4", "messages": PARIS, "max_tokens": 1})
    (prompt_ids, _), = fake_engine.requests.values()
    assert client.post("/tokenize", json={"messages": PARIS}).json()["tokens"] == prompt_ids


def test_detokenize(client):
    ids = client.post("/tokenize", json={"prompt": "héllo", "add_special_tokens": False}).json()["tokens"]
    assert client.post("/detokenize", json={"model": "gpt-4", "tokens": ids}).json() == {"prompt": "héllo"}


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {"model": "gpt-4"}, None),
    ("/tokenize", {"prompt": "a", "messages": PARIS}, None),
    ("/tokenize", {"messages": PARIS, "chat_template_kwargs": {"tools": "x"}}, "chat_template_kwargs"),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("/tokenize", {"model": "nope", "prompt": "a"}, "model"),
    ("/detokenize", {"tokens": [10**6]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_tokenize_errors(client, path, body, param):
    r = client.post(path, json=body)
    check_error(r, 404 if param == "model" else 400, param=param)


def test_tokenize_needs_the_key(auth_client):
    for path, body in [("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [70]})]:
        check_error(auth_client.post(path, json=body), 401)
        r = auth_client.post(path, json=body, headers={"Authorization": "Bearer key-two"})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", [CHAT, COMP])
def test_error_after_the_200_is_raised_by_the_openai_client(fake_engine, path):
    fake_engine.fail_with, fake_engine.fail_after = RuntimeError("boom in a forward pass"), 3
    with make_client(fake_engine) as test_client:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=test_client, max_retries=0)
        if path == CHAT:
            stream = client.chat.completions.create(model="gpt-4", messages=PARIS, stream=True, temperature=0)
        else:
            stream = client.completions.create(model="gpt-4", prompt="x", stream=True, temperature=0)
        received = []
        with pytest.raises(openai.APIError) as exc:
            for chunk in stream:
                received.append(chunk)
        assert received  # the stream had started (HTTP 200) before the failure
        assert "error while generating" in str(exc.value) and "boom" not in str(exc.value)
        raw = test_client.post(path, json={"model": "gpt-4", "prompt": "x", "messages": PARIS, "stream": True})
        events = parse_sse(raw.text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"


def test_max_tokens_0_with_echo_scores_the_prompt(client, fake_engine):
    r = client.post(COMP, json={"model": "gpt-4", "prompt": "Hi", "max_tokens": 0, "echo": True, "logprobs": 0})
    body = validate(r.json(), "CreateCompletionEchoResponse")
    choice = body["choices"][0]
    assert choice["text"] == "Hi" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["", "H", "i"]  # the prompt's only; nothing generated is shown
    assert body["usage"]["completion_tokens"] == 0
    (_, params), = fake_engine.requests.values()
    assert params.max_tokens == 1 and params.prompt_logprobs == 0
    check_error(client.post(COMP, json={"model": "gpt-4", "prompt": "Hi", "max_tokens": 0}), 400, param="echo")
