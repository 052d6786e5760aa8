"""Structured output on the real model through the real openai client: the grammar makes a
135M model's output valid. Every body and chunk is validated against the spec."""
from __future__ import annotations

import json
import re

import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.helpers import check_error, check_stream, parse_sse
from tests.spec_validator import validate

MODEL = "SmolLM2-135M-Instruct"


class City(BaseModel):
    name: str
    country: str
    population_millions: int = Field(ge=0, le=100)  # bounded: an unbounded int lets a small model repeat digits


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_parse_with_a_pydantic_model_returns_a_validated_object(openai_client):
    raw = openai_client.chat.completions.with_raw_response.parse(
        model=MODEL, messages=ask("Describe Paris as JSON."), response_format=City, temperature=0, max_tokens=60)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


class CityUnbounded(BaseModel):
    name: str
    country: str
    population: int  # unbounded in the schema: generated within 64 bits, not 1111… until max_tokens


def test_an_unbounded_integer_does_not_run_away(openai_client):
    completion = openai_client.chat.completions.parse(
        model=MODEL, messages=ask("Describe Paris as JSON."), response_format=CityUnbounded, temperature=0,
        max_tokens=80)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, CityUnbounded)
    assert -(2**63) <= choice.message.parsed.population < 2**63


def test_json_schema_strict_sampled_n3_all_valid(http):
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "confidence"],
              "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                             "confidence": {"type": "integer", "minimum": 0, "maximum": 100}}}
    body = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ask("Is the sky blue?"), "n": 3, "temperature": 1.0, "seed": 7,
        "max_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}},
    }).json()
    validate(body, "CreateChatCompletionResponse")
    assert len(body["choices"]) == 3
    for choice in body["choices"]:
        data = json.loads(choice["message"]["content"])
        assert set(data) == {"answer", "confidence"} and data["answer"] in ("yes", "no")
        assert 0 <= data["confidence"] <= 100 and choice["finish_reason"] == "stop"


def test_json_object_streamed(http):
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ask("Give me a JSON object with the name and the age of a cat."), "temperature": 0, "max_tokens": 100,
        "response_format": {"type": "json_object"}, "stream": True})
    texts = check_stream(parse_sse(r.text))
    assert isinstance(json.loads(texts[0]), dict)


def test_regex_and_choice_on_both_endpoints(http):
    for path, prompt in (("/v1/chat/completions", {"messages": ask("Give a date.")}),
                         ("/v1/completions", {"prompt": "The date is"})):
        body = http.post(path, json={"model": MODEL, **prompt, "temperature": 0, "max_tokens": 20,
                                     "structured_outputs": {"regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"}}).json()
        validate(body, "CreateChatCompletionResponse" if "messages" in prompt else "CreateCompletionResponse")
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        assert re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]", text) and choice["finish_reason"] == "stop"
    for extra in ({"guided_choice": ["positive", "negative"]}, {"structured_outputs": {"choice": ["positive", "negative"]}}):
        body = http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": ask("Sentiment of: I love it!"), "temperature": 0.8, "n": 4, "seed": 1,
            **extra}).json()
        validate(body, "CreateChatCompletionResponse")
        assert {c["message"]["content"] for c in body["choices"]} <= {"positive", "negative"}


def test_openai_client_extra_body_and_a_bad_schema(openai_client, http):
    raw = openai_client.completions.with_raw_response.create(model=MODEL, prompt="Answer yes or no:", max_tokens=5,
                                                             extra_body={"guided_regex": "(yes|no)"}, temperature=0)
    validate(raw.http_response.json(), "CreateCompletionResponse")
    assert raw.parse().choices[0].text in ("yes", "no")
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=MODEL, messages=ask("hi"), response_format=bad)
    assert info.value.body["param"] == "response_format"
    check_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": ask("hi"),
                                                        "guided_regex": "(unclosed"}), 400, param="guided_regex")
