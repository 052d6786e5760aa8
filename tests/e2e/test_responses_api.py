"""The Responses API on the real model through the real openai client (create, stream, the
stream() helper, parse with a pydantic model, a function call and its output, continuation,
retrieve / input_items / delete, another key's 404) and through langchain-openai and litellm.
Every body and stream event is validated against the spec."""
from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import API_KEY
from tests.server.named_events import check_response_events, parse_named_sse
from tests.spec_validator import validate

MODEL = "SmolLM2-135M-Instruct"
ASK = "What is the capital of France? Answer in one sentence."
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)


def test_create_plain(openai_client):
    raw = openai_client.responses.with_raw_response.create(model=MODEL, input=ASK, temperature=0,
                                                           max_output_tokens=20)
    validate(raw.http_response.json(), "Response")
    response = raw.parse()
    assert response.status == "completed" and response.output[0].type == "message"
    assert "Paris" in response.output_text and response.usage.output_tokens > 0


def test_create_streamed_events_are_valid_and_in_order(openai_client, http):
    body = {"model": MODEL, "input": ASK, "temperature": 0, "max_output_tokens": 20, "stream": True}
    events = check_response_events(parse_named_sse(http.post("/v1/responses", json=body).text))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert "Paris" in text and events[-1]["response"]["output"][0]["content"][0]["text"] == text
    # the openai client reads the same stream
    streamed = list(openai_client.responses.create(**body))
    assert [e.type for e in streamed] == kinds and streamed[-1].response.output_text == text


def test_stream_helper_assembles_the_response(openai_client):
    with openai_client.responses.stream(model=MODEL, input=ASK, temperature=0, max_output_tokens=20) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) and "Paris" in final.output_text


def test_parse_with_a_pydantic_model(openai_client):
    raw = openai_client.responses.with_raw_response.parse(
        model=MODEL, input="Describe Paris as JSON.", text_format=City, temperature=0, max_output_tokens=60)
    validate(raw.http_response.json(), "Response")
    parsed = raw.parse().output_parsed
    assert isinstance(parsed, City) and parsed.name


def test_function_call_and_output_round_trip(openai_client):
    raw = openai_client.responses.with_raw_response.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0, max_output_tokens=40)
    validate(raw.http_response.json(), "Response")
    first = raw.parse()
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    raw = openai_client.responses.with_raw_response.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER], temperature=0, max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}])
    validate(raw.http_response.json(), "Response")
    second = raw.parse()
    assert second.previous_response_id == first.id and second.output_text
    items = openai_client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]


def test_continuation_retrieve_input_items_delete_and_key_isolation(openai_client, http, server_url):
    first = openai_client.responses.create(model=MODEL, input="My name is Ada. Say hello.", temperature=0,
                                           max_output_tokens=16)
    second = openai_client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                            temperature=0, max_output_tokens=16)
    body = http.get(f"/v1/responses/{second.id}").json()
    assert validate(body, "Response")["id"] == second.id and body["previous_response_id"] == first.id
    listed = http.get(f"/v1/responses/{second.id}/input_items", params={"order": "asc"}).json()
    validate(listed, "ResponseItemList")
    assert [i.get("role") for i in listed["data"]] == ["user", "assistant", "user"]
    assert listed["data"][0]["content"][0]["text"] == "My name is Ada. Say hello."
    other = openai.OpenAI(base_url=f"{server_url}/v1", api_key="other-key", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=MODEL, input="x", previous_response_id=second.id, max_output_tokens=16)
    openai_client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.retrieve(second.id)
    assert caught.value.body["code"] == "response_not_found"
    assert openai_client.responses.retrieve(first.id).id == first.id


def test_langchain_openai_with_the_responses_api(server_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{server_url}/v1", api_key=API_KEY, use_responses_api=True,
                     temperature=0, max_tokens=20, max_retries=0)
    message = llm.invoke(ASK)
    assert "Paris" in message.text and message.response_metadata["id"].startswith("resp_")


def test_litellm_responses(server_url):
    import litellm  # a test dependency (pyproject's test extra)

    response = litellm.responses(model=f"openai/{MODEL}", input=ASK, api_base=f"{server_url}/v1",
                                 api_key=API_KEY, temperature=0, max_output_tokens=20)
    text = "".join(part.text for item in response.output if item.type == "message" for part in item.content)
    assert "Paris" in text and response.id.startswith("resp_")
