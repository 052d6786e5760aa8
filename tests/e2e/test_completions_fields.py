"""/v1/completions fields through the real server and the `openai` client: echo, best_of, batch
prompts, suffix, n = 3 streaming, usage in streams (cached tokens), errors after the 200."""
from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.spec_client import validating_openai_client
from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def openai_client(server_url):
    """Every body and chunk the client receives is spec-checked first (tests/e2e/spec_client.py)."""
    return validating_openai_client(server_url, API_KEY)


def complete(client, **kwargs):
    raw = client.completions.with_raw_response.create(**{"model": "gpt-4", **kwargs})
    validate(raw.http_response.json(), "CreateCompletionResponse")
    return raw.parse()


def test_echo(openai_client):
    plain = complete(openai_client, prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = complete(openai_client, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens  # the prompt is not billed twice


def test_echo_streamed(openai_client):
    chunks = list(openai_client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4, temperature=0,
                                                   echo=True, stream=True))
    assert chunks[0].choices[0].text == PROMPT  # the prompt first, then the completion
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == PROMPT + complete(openai_client, prompt=PROMPT, max_tokens=4, temperature=0).choices[0].text


def test_echo_token_prompt(openai_client, http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    echoed = complete(openai_client, prompt=ids, max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT)


def test_best_of_picks_the_most_likely(openai_client):
    common = dict(prompt="My favourite colour is", max_tokens=4, temperature=1.0, seed=1234, logprobs=0)
    # with a seed, candidate i of best_of=4 is choice i of n=4 (the same engine sequence seeds)
    every = complete(openai_client, n=4, **common).choices
    assert all(c.finish_reason == "length" for c in every)  # no hidden end-of-text logprob in the sums
    totals = {c.text: sum(c.logprobs.token_logprobs) for c in every}
    assert len(totals) == 4
    best = complete(openai_client, n=1, best_of=4, **common)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.usage.completion_tokens == 4 * 4  # every candidate was generated
    assert best.choices[0].text == max(totals, key=totals.get)
    same = next(c for c in every if c.text == best.choices[0].text)
    assert best.choices[0].logprobs.token_logprobs == pytest.approx(same.logprobs.token_logprobs, abs=1e-3)


def test_best_of_n2_without_logprobs(openai_client):
    body = complete(openai_client, prompt=["Red", "Blue"], n=2, best_of=3, max_tokens=3, seed=7)
    assert [c.index for c in body.choices] == [0, 1, 2, 3] and all(c.logprobs is None for c in body.choices)


def test_best_of_refused(openai_client):
    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.completions.create(model="gpt-4", prompt=PROMPT, best_of=3, stream=True)
    assert exc.value.body["param"] == "best_of" and "stream" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.completions.create(model="gpt-4", prompt=PROMPT, best_of=2, n=3)
    assert exc.value.body["param"] == "best_of"


def test_batch_prompts_index_prompt_times_n(openai_client):
    prompts = ["The capital of France is", "1, 2, 3,"]
    body = complete(openai_client, prompt=prompts, n=2, max_tokens=5, temperature=0)
    assert [c.index for c in body.choices] == [0, 1, 2, 3]
    for k, prompt in enumerate(prompts):
        alone = complete(openai_client, prompt=prompt, max_tokens=5, temperature=0).choices[0].text
        assert body.choices[2 * k].text == body.choices[2 * k + 1].text == alone
    one = complete(openai_client, prompt=prompts[0], max_tokens=5, temperature=0)
    two = complete(openai_client, prompt=prompts[1], max_tokens=5, temperature=0)
    assert body.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens


def test_suffix_without_fim_tokens_is_a_clear_400(openai_client):
    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.completions.create(model="gpt-4", prompt="def add(a, b):", suffix="    return c")
    assert exc.value.body["param"] == "suffix" and "fill-in-the-middle" in exc.value.body["message"]


def test_n3_stream_with_openai_client(openai_client):
    chunks = list(openai_client.completions.create(model="gpt-4", prompt="Once upon a time", n=3, max_tokens=6,
                                                   seed=5, stream=True, stream_options={"include_usage": True}))
    texts, finish = {}, {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert sorted(texts) == sorted(finish) == [0, 1, 2] and all(texts.values())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 18


def test_stream_usage_reports_cached_tokens(http):
    # a prompt longer than a few KV blocks, sent twice: the second finds it in the prefix cache
    prompt = "In the beginning the Universe was created. " * 20
    body = {"model": "gpt-4", "prompt": prompt, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    usages = []
    for _ in range(2):
        events = parse_sse(http.post("/v1/completions", json=body).text)
        check_stream(events, include_usage=True)
        usages.append(events[-2]["usage"])
    assert usages[1]["prompt_tokens"] == usages[0]["prompt_tokens"] > 100
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] > 0


def test_stream_without_include_usage_has_no_usage(http):
    events = parse_sse(http.post("/v1/completions", json={"model": "gpt-4", "prompt": PROMPT, "max_tokens": 3,
                                                          "stream": True}).text)
    check_stream(events, include_usage=False)
