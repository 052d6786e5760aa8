"""Hostile inputs that once reached an engine or a traceback: each is a 400 with OpenAI's body."""
from __future__ import annotations

import pytest

from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error

MSG = [{"role": "user", "content": "hi"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "logit_bias": {"150": 5}}, "logit_bias"),
    (COMP, {"prompt": "x", "logit_bias": {"99": -100, "100": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "stop_token_ids": [1, 200]}, "stop_token_ids"),
])
def test_token_ids_past_the_models_vocabulary(path, body, param):
    """The model's logits (100 wide here) are narrower than the tokenizer (259 ids): ids are
    checked against the model, whose logits the sampler indexes, not the tokenizer."""
    engine = FakeEngine()
    engine.model_config.vocab_size = 100
    with make_client(engine) as client:
        check_error(client.post(path, json={**body, "max_tokens": 2}), 400, param=param)
        assert not engine.requests  # nothing reached the engine
        ok = client.post(path, json={**body, "max_tokens": 2, "logit_bias": {"99": 1}, "stop_token_ids": [99]})
        assert ok.status_code == 200, ok.text


def _nested_schema(levels: int) -> dict:
    schema = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize("path,body,param", [
    (CHAT, '{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi \\udfff there"}]}', "messages[0].content"),
    (COMP, '{"prompt": "lone \\udc00"}', "prompt"),
    (COMP, '{"prompt": ["ok", "\\ud83d"]}', "prompt[1]"),
    (COMP, '{"prompt": "x", "stop": ["\\ud800"]}', "stop[0]"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),
])
def test_lone_surrogates_are_a_400(client, path, body, param, caplog):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    check_error(r, 400, code="invalid_value", param=param)
    assert "Unicode" in r.json()["error"]["message"]
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback in the log


def test_surrogate_pairs_are_text(client):
    r = client.post(COMP, content='{"prompt": "hi \\ud83d\\ude00", "max_tokens": 2}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["response_format", "guided_json", "tools"])
def test_deeply_nested_schema_is_a_400(client, field, caplog):
    schema = _nested_schema(440)
    body = {"messages": MSG, "max_tokens": 2}
    if field == "response_format":
        body[field] = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    elif field == "guided_json":
        body[field] = schema
    else:
        body.update(tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}], tool_choice="required")
    r = client.post(CHAT, json=body)
    check_error(r, 400, param=field)
    assert "nested more than" in r.json()["error"]["message"] and len(r.text) < 1000
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_schema_of_ordinary_depth_still_works(client):
    body = {"messages": MSG, "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": _nested_schema(12)}}}
    assert client.post(CHAT, json=body).status_code == 200


@pytest.mark.parametrize("levels", [440, 5000])
def test_deeply_nested_schema_as_a_string_is_a_400(client, levels):
    text = '{"type": "object", "properties": {"a": ' * levels + "{}" + "}}" * levels
    r = client.post(CHAT, json={"messages": MSG, "max_tokens": 2, "guided_json": text})
    check_error(r, 400, param="guided_json")
