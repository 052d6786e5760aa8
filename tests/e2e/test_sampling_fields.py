"""The sampling fields through the real server and the `openai` client, one test each: logit_bias,
presence / frequency / repetition penalties, top_k, min_p, top_p, stop_token_ids, ignore_eos,
min_tokens, seed per choice; and the chat fields we refuse (audio, prediction). Every body and
chunk the client receives is spec-checked first (tests/e2e/spec_client.py)."""
from __future__ import annotations

from collections import Counter

import openai
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.spec_client import validating_openai_client

PROMPT = "The capital of France is"
REPETITIVE = "one two one two one two one two one two one two one two"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(server_url):
    return validating_openai_client(server_url, API_KEY)


def token_id(http, text: str) -> int:
    ids = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def complete(client, **kwargs):
    return client.completions.create(**{"model": "gpt-4", "prompt": PROMPT, "max_tokens": 6,
                                        "temperature": 0, **kwargs})


def tokens_of(client, **kwargs) -> list[str]:
    return complete(client, logprobs=0, **kwargs).choices[0].logprobs.tokens


def test_logit_bias_forces_and_bans_tokens(client, http):
    banana = token_id(http, " banana")
    forced = complete(client, logit_bias={str(banana): 100})
    assert forced.choices[0].text == " banana" * 6
    chat = client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=3, temperature=0,
                                          logit_bias={str(banana): 100})
    assert chat.choices[0].message.content == " banana" * 3
    paris = token_id(http, " Paris")
    assert complete(client).choices[0].text.startswith(" Paris")
    banned = complete(client, logit_bias={str(paris): -100})
    assert not banned.choices[0].text.startswith(" Paris")


@pytest.mark.parametrize("field, extra", [("frequency_penalty", False), ("presence_penalty", False),
                                          ("repetition_penalty", True)])
def test_penalties_reduce_repetition(client, field, extra):
    value = 1.8 if field == "repetition_penalty" else 2.0
    kwargs = {"extra_body": {field: value}} if extra else {field: value}
    plain = tokens_of(client, prompt=REPETITIVE, max_tokens=12)
    penalized = tokens_of(client, prompt=REPETITIVE, max_tokens=12, **kwargs)
    assert Counter(plain).most_common(1)[0][1] >= 4  # unpenalized, the model keeps repeating
    assert penalized != plain
    # Greedy on the same logits, the two first differ where the penalty pushed plain's token
    # below another: plain's token had been seen (generated; for repetition_penalty, as vLLM,
    # in the prompt too), and the one chosen instead had been seen less (frequency) or not at all
    # (presence, repetition: one penalty for every seen token keeps their order).
    i = next(i for i, (a, b) in enumerate(zip(plain, penalized)) if a != b)
    seen = Counter(plain[:i])
    if field == "repetition_penalty":
        seen.update(tokens_of(client, prompt=REPETITIVE, max_tokens=1, echo=True)[:-1])
    assert seen[plain[i]] > 0
    if field == "frequency_penalty":
        assert seen[penalized[i]] < seen[plain[i]]
    else:
        assert seen[penalized[i]] == 0


def test_top_k_1_and_min_p_1_and_tiny_top_p_are_greedy(client):
    greedy = complete(client, max_tokens=12).choices[0].text
    for kwargs in ({"extra_body": {"top_k": 1}}, {"extra_body": {"min_p": 1.0}}, {"top_p": 1e-6}):
        sampled = complete(client, max_tokens=12, temperature=1.5, seed=99, **kwargs)
        assert sampled.choices[0].text == greedy, kwargs
    wide = {complete(client, max_tokens=12, temperature=1.5, seed=s).choices[0].text for s in range(4)}
    assert len(wide) > 1  # without them, this temperature does sample


def test_stop_token_ids(client, http):
    paris = token_id(http, " Paris")
    out = complete(client, extra_body={"stop_token_ids": [paris]})
    assert out.choices[0].text == "" and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == 1  # the stop token was generated, its text is not returned


def test_ignore_eos_and_min_tokens(client):
    natural = client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=64, temperature=0)
    assert natural.choices[0].finish_reason == "stop"
    n = natural.usage.completion_tokens
    longer = client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=64, temperature=0,
                                            extra_body={"min_tokens": n + 5})
    assert longer.usage.completion_tokens >= n + 5
    endless = client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=n + 10, temperature=0,
                                             extra_body={"ignore_eos": True})
    assert endless.usage.completion_tokens == n + 10 and endless.choices[0].finish_reason == "length"


def test_seed_per_choice(client):
    def run():
        out = client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=12, temperature=1.2,
                                             n=3, seed=7)
        return [c.message.content for c in sorted(out.choices, key=lambda c: c.index)]

    first, again = run(), run()
    assert first == again  # the same seed gives the same choices
    assert len(set(first)) > 1  # and the choices are not copies of one another


@pytest.mark.parametrize("field, value", [("audio", {"voice": "alloy", "format": "mp3"}),
                                          ("prediction", {"type": "content", "content": "Paris"}),
                                          ("modalities", ["text", "audio"])])
def test_fields_we_cannot_honour_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=2, **{field: value})
    assert err.value.status_code == 400 and field in str(err.value)
