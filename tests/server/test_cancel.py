"""A client that goes away (streaming or not) aborts its engine requests at once."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from server.app import create_app
from server.serving import OpenAIServing
from server.settings import Settings
from tests.server.fake_engine import FakeEngine


async def call_and_leave(app, path: str, body: dict, leave_when) -> list[dict]:
    """Drive the ASGI app directly; the client disconnects once ``leave_when(sent)`` is true."""
    sent: list[dict] = []
    gone = asyncio.Event()
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if leave_when(sent):
            gone.set()

    async def leave_on_time():
        while not leave_when(sent):
            await asyncio.sleep(0.01)
        gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    watcher = asyncio.create_task(leave_on_time())
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    watcher.cancel()
    return sent


def make_app(engine: FakeEngine):
    app = create_app(Settings(served_model_name=["m"]), engine=engine)
    app.state.serving = OpenAIServing(engine, ["m"])  # what the lifespan would do
    return app


@pytest.mark.parametrize("path,body", [("/v1/completions", {"model": "m", "prompt": "x"}),
                                       ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})])
def test_non_streaming_disconnect_aborts(path, body):
    engine = FakeEngine(step_delay=0.02)  # 256 tokens would take ~5 s

    async def main():
        start = time.monotonic()
        await call_and_leave(make_app(engine), path, {**body, "n": 2},
                             leave_when=lambda sent: time.monotonic() - start > 0.2)
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert elapsed < 2, elapsed
    (request_id,) = engine.requests
    assert engine.aborted == [request_id] and not engine.finished


def test_streaming_disconnect_aborts():
    engine = FakeEngine(step_delay=0.02)

    def after_three_chunks(sent):
        return sum(m.get("body", b"").count(b"data:") for m in sent if m["type"] == "http.response.body") >= 3

    async def main():
        start = time.monotonic()
        sent = await call_and_leave(make_app(engine), "/v1/chat/completions",
                                    {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
                                    leave_when=after_three_chunks)
        return time.monotonic() - start, sent

    elapsed, sent = asyncio.run(main())
    assert sent[0]["status"] == 200 and elapsed < 2, elapsed
    (request_id,) = engine.requests
    assert engine.aborted == [request_id] and not engine.finished


def test_finished_request_is_not_aborted():
    engine = FakeEngine()

    async def main():
        return await call_and_leave(make_app(engine), "/v1/completions",
                                    {"model": "m", "prompt": "x", "temperature": 0}, leave_when=lambda sent: False)

    asyncio.run(main())
    assert engine.finished and not engine.aborted
