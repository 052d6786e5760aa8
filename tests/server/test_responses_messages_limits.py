"""/v1/responses and /v1/messages keep the chat endpoint's guarantees: a client that leaves
aborts its engine request, the request timeout stops the generation, a failure after the 200
is an in-band event in each API's own shape, and the metrics count them. And a reasoning model's
thinking (chat deltas with reasoning_content) becomes a reasoning item / a thinking block."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from server.app import create_app
from server.protocol_responses import ResponsesRequest
from server.responses_events import ResponseChunks
from server.serving import OpenAIServing
from server.serving_anthropic import MessageChunks
from server.settings import Settings
from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.server.named_events import check_response_events, parse_named_sse, strict_sdk
from tests.server.test_cancel import call_and_leave
from tests.spec_validator import validate

BODIES = {"/v1/responses": {"model": "m", "input": "x"},
          "/v1/messages": {"model": "m", "max_tokens": 200, "messages": [{"role": "user", "content": "x"}]}}


def make_app(engine: FakeEngine, **settings):
    app = create_app(Settings(_env_file=None, served_model_name=["m"], **settings), engine=engine)
    app.state.serving = OpenAIServing(engine, ["m"], metrics=app.state.metrics)  # what the lifespan would do
    return app


@pytest.mark.parametrize("path", BODIES)
@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_aborts(path, stream):
    engine = FakeEngine(step_delay=0.02)  # 200 tokens would take ~4 s

    async def main():
        start = time.monotonic()
        await call_and_leave(make_app(engine), path, {**BODIES[path], "stream": stream},
                             leave_when=lambda sent: time.monotonic() - start > 0.2)
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert elapsed < 2, elapsed
    (request_id,) = engine.requests
    assert engine.aborted == [request_id] and not engine.finished


def test_responses_stream_failure_is_an_error_event_then_response_failed(client, fake_engine):
    fake_engine.fail_with, fake_engine.fail_after = RuntimeError("boom in a forward pass"), 3
    r = client.post("/v1/responses", json={"input": "x", "stream": True})
    events = check_response_events(parse_named_sse(r.text))
    assert r.status_code == 200 and [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["code"] == "server_error"
    assert "boom" not in r.text  # the cause is logged, not sent
    metrics = client.get("/metrics").text
    assert 'gptserve:request_errors_total{status="500",type="server_error"} 1.0' in metrics


def test_messages_stream_failure_is_an_anthropic_error_event(client, fake_engine):
    fake_engine.fail_with, fake_engine.fail_after = RuntimeError("boom"), 3
    r = client.post("/v1/messages", json={**BODIES["/v1/messages"], "model": "gpt-4", "stream": True})
    events = parse_named_sse(r.text)
    assert events[-1] == {"type": "error", "error": {"type": "api_error",
                                                      "message": "The server had an error while generating the response."}}
    adapter = TypeAdapter(RawMessageStreamEvent)
    for event in events[:-1]:
        strict_sdk(adapter, event)


@pytest.mark.parametrize("stream", [False, True])
def test_request_timeout_stops_the_generation(stream):
    engine = FakeEngine(step_delay=0.05)
    with make_client(engine, request_timeout=0.3) as client:
        responses = client.post("/v1/responses", json={"model": "gpt-4", "input": "x", "stream": stream})
        messages = client.post("/v1/messages", json={**BODIES["/v1/messages"], "model": "gpt-4", "stream": stream})
    assert len(engine.aborted) == 2 and not engine.finished
    if stream:
        failed = check_response_events(parse_named_sse(responses.text))[-2:]
        assert failed[0]["code"] == "request_timeout" and failed[1]["type"] == "response.failed"
        assert parse_named_sse(messages.text)[-1]["error"]["type"] == "timeout_error"
    else:
        assert responses.status_code == 408 and responses.json()["error"]["code"] == "request_timeout"
        assert messages.status_code == 408 and messages.json()["error"]["type"] == "timeout_error"


def test_finished_generations_are_counted(client):
    client.post("/v1/responses", json={"input": "x", "temperature": 0})
    client.post("/v1/messages", json={**BODIES["/v1/messages"], "model": "gpt-4", "temperature": 0})
    metrics = client.get("/metrics").text
    assert 'gptserve:request_success_total{finish_reason="stop"} 2.0' in metrics
    assert "gptserve:e2e_request_latency_seconds_count 2.0" in metrics


def thought_then_answer(chunks) -> list[dict]:
    """What a reasoning model's chat deltas (reasoning_content, then content) make of ``chunks``."""
    deltas = [SimpleNamespace(reasoning_content=t, content=c, tool_calls=None)
              for t, c in (("Paris is ", None), ("in France.", None), (None, "Paris."))]
    return [e for delta in deltas for e in chunks._on_delta(delta)] + chunks.finish_chunk(0, "stop")


def test_reasoning_becomes_a_reasoning_item_before_the_message():
    chunks = ResponseChunks("resp_1", "m", None, ResponsesRequest(input="x"))
    events = check_response_events(chunks.start() + thought_then_answer(chunks) + chunks.end())
    assert [e["type"] for e in events[2:9]] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done"]
    final = validate(events[-1]["response"], "Response")
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"] == "Paris is in France."
    assert message["content"][0]["text"] == "Paris."


def test_reasoning_becomes_a_thinking_block_before_the_text():
    chunks = MessageChunks("msg_1", "m", None, 5)
    events = chunks.start() + thought_then_answer(chunks) + chunks.end()
    adapter = TypeAdapter(RawMessageStreamEvent)
    for event in events:
        strict_sdk(adapter, event)
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    message = strict_sdk(Message, chunks.full_response())
    assert message.content[0].thinking == "Paris is in France." and message.content[1].text == "Paris."
