"""Bad requests get 4xx with OpenAI's error body (never FastAPI's 422), naming the field."""
from __future__ import annotations

import pytest

from engine import EngineDeadError
from tests.server.conftest import make_client
from tests.server.helpers import check_error, parse_sse
from tests.server.fake_engine import FakeEngine

MSG = [{"role": "user", "content": "hi"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"

CASES = [  # (path, body, status, param, code)
    (CHAT, {"model": "gpt-4"}, 400, "messages", "missing_required_parameter"),
    (CHAT, {"model": "gpt-4", "messages": []}, 400, "messages", None),
    (CHAT, {"model": "gpt-4", "messages": "hi"}, 400, "messages", None),
    (CHAT, {"model": "gpt-4", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", None),
    (CHAT, {"model": "gpt-4", "messages": [{"role": "user"}]}, 400, "messages[0]", None),
    (CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0]", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "temperature": -0.1}, 400, "temperature", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "temperature": 2.5}, 400, "temperature", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "temperature": "0.5"}, 400, "temperature", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "top_p": 0}, 400, "top_p", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "top_p": 1.5}, 400, "top_p", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "n": 0}, 400, "n", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "n": 1000}, 400, "n", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "n": True}, 400, "n", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "max_tokens": 0}, 400, "max_tokens", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "max_completion_tokens": -1}, 400, "max_completion_tokens", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "stop": ["x"] * 100}, 400, "stop", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "logit_bias": {"1": 500}}, 400, None, None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "top_logprobs": 2}, 400, "top_logprobs", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "chat_template_kwargs": {"tools": []}}, 400, "chat_template_kwargs", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "chat_template_kwargs": {"enable_thinking": [1]}}, 400,
     "chat_template_kwargs.enable_thinking", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "continue_final_message": True}, 400, "continue_final_message", None),
    (CHAT, {"model": "gpt-4", "messages": [{"role": "assistant", "content": "x"}], "continue_final_message": True,
            "add_generation_prompt": True}, 400, "continue_final_message", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "tools": [{"type": "function"}]}, 400, "tools[0].function", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "response_format": {"type": "xml"}}, 400, "response_format.type", None),
    (CHAT, {"model": "gpt-4", "messages": MSG, "max_tokens": 5, "min_tokens": 9}, 400, None, None),
    (CHAT, {"model": "nope", "messages": MSG}, 404, "model", "model_not_found"),
    (CHAT, {"model": "gpt-4", "messages": MSG, "max_tokens": 10_000}, 400, "max_tokens", "context_length_exceeded"),
    (COMP, {"model": "gpt-4"}, 400, "prompt", "missing_required_parameter"),
    (COMP, {"model": "gpt-4", "prompt": []}, 400, "prompt", None),
    (COMP, {"model": "gpt-4", "prompt": [1.5]}, 400, "prompt", None),
    (COMP, {"model": "gpt-4", "prompt": [-1]}, 400, "prompt", None),
    (COMP, {"model": "gpt-4", "prompt": [10**9]}, 400, "prompt", None),
    (COMP, {"model": "gpt-4", "prompt": "x" * 300}, 400, "prompt", "context_length_exceeded"),
    (COMP, {"model": "gpt-4", "prompt": "x", "logprobs": 6}, 400, "logprobs", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "suffix": "y"}, 400, "suffix", "unsupported_parameter"),
    (COMP, {"model": "gpt-4", "prompt": "x", "best_of": 21}, 400, "best_of", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "best_of": 2, "n": 3}, 400, "best_of", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "best_of": 2, "stream": True}, 400, "best_of", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "seed": 2**70}, 400, "seed", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "stream": "yes"}, 400, "stream", None),
    (COMP, {"model": "gpt-4", "prompt": "x", "stream_options": {"include_usage": 3}}, 400, "stream_options.include_usage", None),
]


@pytest.mark.parametrize("path,body,status,param,code", CASES)
def test_bad_request(client, fake_engine, path, body, status, param, code):
    check_error(client.post(path, json=body), status, code=code, param=param)
    assert not fake_engine.requests  # refused before the engine saw anything


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"\xff\xfe", b'{"model": "gpt-4", "prompt": "x", "temperature": NaN}',
                                 b'{"model": "gpt-4", "prompt": "x", "temperature": Infinity}', b""])
def test_malformed_body(client, raw):
    r = client.post(COMP, content=raw, headers={"content-type": "application/json"})
    check_error(r, 400)


def test_wrong_content_type(client):
    check_error(client.post(COMP, content=b'{"model": "gpt-4", "prompt": "x"}', headers={"content-type": "text/plain"}), 400)


def test_context_length_message_has_numbers(client):
    body = check_error(client.post(COMP, json={"model": "gpt-4", "prompt": "abc", "max_tokens": 300}), 400,
                       code="context_length_exceeded")
    assert "256" in body["error"]["message"] and "304" in body["error"]["message"]


def test_body_too_large(fake_engine):
    with make_client(fake_engine, max_request_body_bytes=2048) as client:
        check_error(client.post(COMP, json={"model": "gpt-4", "prompt": "x" * 4096}), 413)
        # chunked (no Content-Length) is counted as it arrives
        r = client.post(COMP, content=iter([b'{"prompt": "', b"x" * 4096, b'"}']),
                        headers={"content-type": "application/json"})
        check_error(r, 413)
        assert client.post(COMP, json={"model": "gpt-4", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_unknown_route_and_method(client):
    check_error(client.post("/v1/nope", json={}), 404)
    check_error(client.get(CHAT), 405)
    check_error(client.get("/v1/models/nope"), 404, code="model_not_found")


@pytest.mark.parametrize("stream", [False, True])
def test_engine_error_is_500_or_event(fake_engine, stream):
    fake_engine.fail_with, fake_engine.fail_after = RuntimeError("boom in a forward pass"), 2
    with make_client(fake_engine) as client:
        r = client.post(COMP, json={"model": "gpt-4", "prompt": "x", "stream": stream})
        if not stream:
            body = check_error(r, 500)
        else:
            assert r.status_code == 200
            events = parse_sse(r.text)
            assert events[-1] == "[DONE]" and "error" in events[-2]
            body = events[-2]
        assert "boom" not in str(body) and "Traceback" not in str(body)


def test_engine_dead_is_503(fake_engine):
    fake_engine.fail_with = EngineDeadError("loop died")
    with make_client(fake_engine) as client:
        check_error(client.post(COMP, json={"model": "gpt-4", "prompt": "x"}), 503)
        check_error(client.get("/health"), 503)
        check_error(client.post(COMP, json={"model": "gpt-4", "prompt": "x"}), 503)
