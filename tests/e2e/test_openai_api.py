"""The real server and the real `openai` client: every body and chunk checked against the spec."""
from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import API_KEY, SERVED_NAMES
from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_greedy_chat_answers_paris(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="SmolLM2-135M-Instruct", messages=PARIS, temperature=0)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    response = raw.parse()
    assert response.choices[0].message.content == "The capital of France is Paris."
    assert response.choices[0].finish_reason == "stop" and response.model == "SmolLM2-135M-Instruct"
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_stream_with_openai_client(openai_client):
    stream = openai_client.chat.completions.create(model="gpt-4", messages=PARIS, temperature=0, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("path,body,n", [
    ("/v1/chat/completions", {"model": "gpt-4", "messages": PARIS, "max_tokens": 12, "n": 3, "seed": 5}, 3),
    ("/v1/completions", {"model": "davinci-codex", "prompt": "The sky is", "max_tokens": 12, "n": 3}, 3),
    ("/v1/completions", {"model": "davinci-codex", "prompt": ["One", "Two"], "max_tokens": 5, "n": 2}, 4),
])
def test_raw_streams_match_the_spec(http, path, body, n):
    for include_usage in (False, True):
        r = http.post(path, json={**body, "stream": True, "stream_options": {"include_usage": include_usage}})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        texts = check_stream(parse_sse(r.text), n=n, include_usage=include_usage)
        assert all(texts.values())


def test_completions_n3_max_tokens(openai_client):
    raw = openai_client.completions.with_raw_response.create(
        model="davinci-codex", prompt="Once upon a time", max_tokens=7, n=3, temperature=0.8)
    body = validate(raw.http_response.json(), "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] <= 21
    assert all(c["finish_reason"] in ("length", "stop") for c in body["choices"])
    assert any(c["finish_reason"] == "length" for c in body["choices"])


def test_completion_stream_with_openai_client(openai_client):
    full = openai_client.completions.create(model="gpt-4", prompt="1, 2, 3,", max_tokens=10, temperature=0)
    stream = openai_client.completions.create(model="gpt-4", prompt="1, 2, 3,", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == full.choices[0].text


def test_stop_string(openai_client):
    base = openai_client.completions.create(model="gpt-4", prompt="1, 2, 3,", max_tokens=12, temperature=0).choices[0].text
    assert "5" in base, base
    stopped = openai_client.completions.create(model="gpt-4", prompt="1, 2, 3,", max_tokens=12, temperature=0, stop=["5"])
    assert stopped.choices[0].text == base[: base.index("5")] and stopped.choices[0].finish_reason == "stop"


def test_seed_gives_same_text(openai_client):
    def sample(seed):
        return openai_client.completions.create(model="gpt-4", prompt="My favourite animal is", max_tokens=16,
                                                temperature=1.0, seed=seed).choices[0].text
    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def test_models(openai_client, http):
    assert [m.id for m in openai_client.models.list()] == SERVED_NAMES
    validate(http.get("/v1/models").json(), "ListModelsResponse")
    validate(http.get("/v1/models/gpt-4").json(), "Model")


def test_auth(server_url):
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.models.list()
    assert err.value.code == "invalid_api_key"
    import httpx
    check_error(httpx.post(f"{server_url}/v1/chat/completions", json={"messages": PARIS}), 401, code="invalid_api_key")
    for trick in ("//v1/models", "/v1/%6Dodels", "/v1/models/../models"):  # never the model list
        r = httpx.get(f"{server_url}{trick}")
        check_error(r, r.status_code)
        assert r.status_code in (401, 404)
    assert httpx.get(f"{server_url}/health").status_code == 200
    assert httpx.get(f"{server_url}/v1/models", headers={"Authorization": "Bearer other-key"}).status_code == 200


def test_errors(openai_client, http):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="no-such-model", messages=PARIS)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(model="gpt-4", prompt="hello " * 1000, max_tokens=1500)
    assert err.value.code == "context_length_exceeded" and "2048" in err.value.message
    for body, param in [({"model": "gpt-4", "messages": PARIS, "temperature": -1}, "temperature"),
                        ({"model": "gpt-4", "messages": PARIS, "top_p": 0}, "top_p"),
                        ({"model": "gpt-4", "messages": PARIS, "n": 0}, "n"),
                        ({"model": "gpt-4", "messages": PARIS, "max_tokens": 0}, "max_tokens"),
                        ({"model": "gpt-4", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
                        ({"model": "gpt-4"}, "messages")]:
        check_error(http.post("/v1/chat/completions", json=body), 400, param=param)
    check_error(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    check_error(http.post("/v1/completions", content=b"x" * (5 * 1024 * 1024)), 413)
    check_error(http.get("/v1/chat/completions"), 405)
    # and the server still answers
    assert http.post("/v1/completions", json={"model": "gpt-4", "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_omitted_max_tokens_means_rest_of_context(http):
    r = http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": PARIS, "temperature": 0})
    body = validate(r.json(), "CreateChatCompletionResponse")
    assert body["choices"][0]["finish_reason"] == "stop"
