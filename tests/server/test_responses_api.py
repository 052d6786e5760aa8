"""/v1/responses over the fake engine: shapes (spec-validated), stream event order and
sequence numbers, tool calls, errors, the store's key isolation and caps."""
from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from server.serving import OpenAIServing
from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error
from tests.server.named_events import check_response_events as check_events
from tests.server.named_events import parse_named_sse as parse_events
from tests.spec_validator import validate

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def post(client, body: dict, **kwargs):
    return client.post("/v1/responses", json={"model": "gpt-4", "temperature": 0, **body}, **kwargs)


def test_plain_response_is_a_valid_response(client):
    r = post(client, {"input": "What is the capital of France?", "instructions": "Be brief.",
                      "max_output_tokens": 64, "metadata": {"k": "v"}, "user": "u1"})
    body = validate(r.json(), "Response")
    assert r.status_code == 200 and body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed" and body["incomplete_details"] is None and body["model"] == "gpt-4"
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["text"] == "The capital of France is Paris."
    assert body["usage"]["output_tokens"] == 32 and body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 32
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"} and body["max_output_tokens"] == 64


def test_input_items_become_the_chat_prompt(client, fake_engine):
    post(client, {"instructions": "Sys.", "input": [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}]})
    (prompt, _), = fake_engine.requests.values()
    text = fake_engine.tokenizer.decode(prompt)
    assert text == ("<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                    "Hello<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n")


def test_max_output_tokens_makes_an_incomplete_response(client):
    body = validate(post(client, {"input": "x", "max_output_tokens": 16}).json(), "Response")
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 16


def test_stream_events_in_order_each_valid(client):
    r = post(client, {"input": "Hi", "stream": True})
    events = check_events(parse_events(r.text))
    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * len(deltas)
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.completed"])
    text = "".join(e["delta"] for e in deltas)
    assert text == "The capital of France is Paris." == events[-4]["text"]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0] == events[-2]["item"]
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}
    # stored: GET returns the streamed response
    assert client.get(f"/v1/responses/{final['id']}").json() == final


def test_stream_ends_incomplete_at_max_output_tokens(client):
    events = check_events(parse_events(post(client, {"input": "x", "max_output_tokens": 16, "stream": True}).text))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_function_call_and_its_output_round_trip(monkeypatch):
    engine = FakeEngine(max_model_len=4096, script="Checking." + CALL)
    with make_client(engine) as client:
        body = validate(post(client, {"input": "Weather in Paris?", "tools": [WEATHER_TOOL]}).json(), "Response")
        message, call = body["output"]
        assert message["content"][0]["text"] == "Checking."
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"].startswith("call_")
        assert body["tools"][0]["name"] == "get_weather"
        # stream: the same items, arguments as deltas
        events = check_events(parse_events(post(client, {"input": "Weather?", "tools": [WEATHER_TOOL],
                                                         "stream": True}).text))
        args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert json.loads(args) == {"city": "Paris"} and done["arguments"] == args and done["name"] == "get_weather"
        assert events[-1]["response"]["output"][1]["arguments"] == args
        # the result goes back as a function_call_output, continuing the first response
        engine.script = "It is sunny."
        second = post(client, {"previous_response_id": body["id"], "tools": [WEATHER_TOOL], "input": [
            {"type": "function_call_output", "call_id": call["call_id"], "output": "22 C, sunny"}]}).json()
        validate(second, "Response")
        assert second["output"][0]["content"][0]["text"] == "It is sunny."
    prompt = engine.tokenizer.decode(list(engine.requests.values())[-1][0])
    assert "Weather in Paris?" in prompt and '"city": "Paris"' in prompt and "22 C, sunny" in prompt


def test_previous_response_carries_the_conversation_not_the_instructions(client, fake_engine):
    first = post(client, {"input": "My name is Ada.", "instructions": "Old rules."}).json()
    second = post(client, {"input": "What is my name?", "previous_response_id": first["id"]}).json()
    prompt = fake_engine.tokenizer.decode(list(fake_engine.requests.values())[-1][0])
    assert "My name is Ada." in prompt and "The capital of France is Paris." in prompt and "Old rules." not in prompt
    assert second["previous_response_id"] == first["id"]
    items = client.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"}).json()
    validate(items, "ResponseItemList")
    assert [i["type"] for i in items["data"]] == ["message"] * 3
    assert [i["role"] for i in items["data"]] == ["user", "assistant", "user"]
    desc = client.get(f"/v1/responses/{second['id']}/input_items", params={"limit": 1}).json()
    assert desc["data"][0]["content"][0]["text"] == "What is my name?" and desc["has_more"] is True


def test_get_delete_and_missing_ids_are_openai_404s(client):
    body = post(client, {"input": "x"}).json()
    assert validate(client.get(f"/v1/responses/{body['id']}").json(), "Response") == body
    deleted = client.delete(f"/v1/responses/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "response.deleted", "deleted": True}
    check_error(client.get(f"/v1/responses/{body['id']}"), 404, param="response_id")
    check_error(client.delete(f"/v1/responses/{body['id']}"), 404)
    check_error(client.get("/v1/responses/resp_nope/input_items"), 404)
    check_error(post(client, {"input": "x", "previous_response_id": "resp_nope"}), 404,
                code="previous_response_not_found", param="previous_response_id")


def test_store_false_is_not_stored(client):
    body = post(client, {"input": "x", "store": False}).json()
    assert body["store"] is False
    check_error(client.get(f"/v1/responses/{body['id']}"), 404)


def test_one_key_never_sees_another_keys_responses(auth_client):
    one = {"Authorization": "Bearer key-one"}
    two = {"Authorization": "Bearer key-two"}
    body = post(auth_client, {"input": "secret"}, headers=one).json()
    assert auth_client.get(f"/v1/responses/{body['id']}", headers=one).status_code == 200
    check_error(auth_client.get(f"/v1/responses/{body['id']}", headers=two), 404)
    check_error(auth_client.get(f"/v1/responses/{body['id']}/input_items", headers=two), 404)
    check_error(auth_client.delete(f"/v1/responses/{body['id']}", headers=two), 404)
    check_error(post(auth_client, {"input": "x", "previous_response_id": body["id"]}, headers=two), 404)
    check_error(auth_client.get(f"/v1/responses/{body['id']}"), 401)
    assert auth_client.get(f"/v1/responses/{body['id']}", headers=one).status_code == 200


def test_store_stays_within_its_caps():
    engine = FakeEngine(max_model_len=8192)
    with make_client(engine, response_store_max_responses=5, response_store_max_bytes=20_000) as client:
        store = client.app.state.response_store
        ids = [post(client, {"input": "x" * 500}).json()["id"] for _ in range(12)]
        assert len(store) == 5 and store.num_bytes("") <= 20_000
        assert client.get(f"/v1/responses/{ids[-1]}").status_code == 200
        check_error(client.get(f"/v1/responses/{ids[0]}"), 404)  # the oldest went first
        for _ in range(6):  # bigger ones: the byte cap binds before the count
            post(client, {"input": "y" * 6000})
        assert store.num_bytes("") <= 20_000 and len(store) < 5


@pytest.mark.parametrize("body,param", [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning.effort"),  # the model does not reason
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, None),
    ({"input": [{"type": "item_reference", "id": "x"}]}, None),
    ({"input": "x", "tool_choice": {"type": "function", "name": "absent"}, "tools": [WEATHER_TOOL]}, "tool_choice"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 100_000}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, None),
    ({}, "input"),
    ({"input": []}, "input"),
])
def test_bad_requests_are_openai_400s(client, body, param):
    r = client.post("/v1/responses", json=body)
    error = check_error(r, 400)["error"]
    if param is not None:
        assert error["param"] == param, error


def test_unsupported_tool_type_is_named(client):
    error = check_error(post(client, {"input": "x", "tools": [WEATHER_TOOL, {"type": "file_search"}]}), 400)["error"]
    assert "file_search" in error["message"] and error["code"] == "unsupported_parameter"


def test_over_the_admission_cap_is_429():
    engine = FakeEngine(step_delay=0.01)
    with make_client(engine, max_num_seqs=1, max_queued_requests=0) as client:
        app = client.app

    async def main():
        app.state.serving = OpenAIServing(engine, ["m"], metrics=app.state.metrics)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            busy = asyncio.create_task(c.post("/v1/responses", json={"input": "x", "max_output_tokens": 30}))
            await asyncio.sleep(0.05)
            refused = await c.post("/v1/responses", json={"input": "x"})
            return refused, await busy

    refused, done = asyncio.run(main())
    check_error(refused, 429, code="server_overloaded")
    assert done.status_code == 200


def test_readme_responses_table_covers_the_spec():
    from tests.server.test_readme_params import spec_fields
    from tests.spec_validator import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## The Responses API\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row[0])}
    assert spec_fields("CreateResponse") - named == set()
    for row in rows:
        if row[1].strip() in ("no", "partly", "accepted"):
            assert len(row[2].strip()) > 20, row


def test_input_items_pages_with_after(client):
    body = post(client, {"input": [{"role": "user", "content": f"turn {i}"} for i in range(5)]}).json()
    url = f"/v1/responses/{body['id']}/input_items"
    first = client.get(url, params={"order": "asc", "limit": 2}).json()
    rest = client.get(url, params={"order": "asc", "limit": 10, "after": first["last_id"]}).json()
    texts = [i["content"][0]["text"] for i in first["data"] + rest["data"]]
    assert texts == [f"turn {i}" for i in range(5)] and first["has_more"] and not rest["has_more"]
    check_error(client.get(url, params={"limit": 0}), 400)
    check_error(client.get(url, params={"after": "msg_unknown"}), 404)
