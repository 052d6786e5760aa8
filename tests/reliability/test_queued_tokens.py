"""--max-queued-tokens, in process with a stand-in engine that holds every request before its
first token until the test lets it go: the prompt tokens admitted but not yet prefilled are
counted exactly once tokenized, a new request is estimated from its body size before anything
is parsed, and past the cap it gets 429 + Retry-After of type "overloaded"."""
from __future__ import annotations

import asyncio

import httpx

from server.app import create_app
from server.serving import OpenAIServing
from server.settings import Settings
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error


class GatedEngine(FakeEngine):
    """Every request waits at the gate before its first output, as if queued behind others."""

    def __init__(self) -> None:
        super().__init__(max_model_len=10**5)
        self.gate = asyncio.Event()
        self.arrived: list[str] = []

    async def generate(self, prompt_ids, params, request_id):
        self.arrived.append(request_id)
        await self.gate.wait()
        async for out in super().generate(prompt_ids, params, request_id):
            yield out


def make_app(engine: FakeEngine, **settings):
    app = create_app(Settings(_env_file=None, served_model_name=["m"], **settings), engine=engine)
    app.state.serving = OpenAIServing(engine, ["m"], metrics=app.state.metrics)  # what the lifespan would do
    return app


async def wait_until(condition, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_queued_prompt_tokens_past_the_cap_get_429():
    engine = GatedEngine()
    app = make_app(engine, max_queued_tokens=1000, max_num_seqs=8)
    admission = app.state.admission

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as client:
            # 600 prompt tokens as ids: a ~2.4 kB body, estimated at ~600 tokens, exactly 600 once parsed
            queued = asyncio.create_task(client.post("/v1/completions", json={"prompt": [5] * 600, "max_tokens": 2}))
            await wait_until(lambda: engine.arrived or queued.done())  # tokenized and handed to the engine
            assert not queued.done(), queued.result().text
            assert admission.num_queued_tokens == 600
            # ~2,400 bytes ≈ 600 tokens more: 1,200 > 1,000, refused before the body is read
            refused = await client.post("/v1/completions", json={"prompt": "a" * 2400, "max_tokens": 2})
            # a small request still fits
            small = asyncio.create_task(client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}))
            await wait_until(lambda: len(engine.arrived) == 2)
            assert admission.num_queued_tokens == 600 + 3  # BOS + "hi"
            engine.gate.set()  # prefill happens: the tokens leave the queue, everything finishes
            done = await asyncio.gather(queued, small)
            assert admission.num_queued_tokens == 0 and admission.num_in_flight == 0
            # with nothing queued, a request is never refused for its own size
            alone = await client.post("/v1/completions", json={"prompt": "a" * 8000, "max_tokens": 2})
            return refused, done, alone

    refused, done, alone = asyncio.run(main())
    error = check_error(refused, 429, code="server_overloaded")["error"]
    assert error["type"] == "overloaded" and "prompt tokens queued" in error["message"], error
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200, 200], [r.text for r in done]
    assert alone.status_code == 200, alone.text
    assert admission.num_queued_tokens == 0


def test_refused_or_failed_requests_leave_no_queued_tokens():
    engine = GatedEngine()
    engine.gate.set()
    app = make_app(engine, max_queued_tokens=1000)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as client:
            bad = await client.post("/v1/completions", json={"prompt": "x" * 100, "max_tokens": -1})  # 400 after admission
            gone = asyncio.create_task(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10**4}))
            await wait_until(lambda: engine.arrived)
            gone.cancel()  # the client leaves mid-generation
            await asyncio.gather(gone, return_exceptions=True)
            return bad

    bad = asyncio.run(main())
    check_error(bad, 400)
    assert app.state.admission.num_queued_tokens == 0 and app.state.admission.num_in_flight == 0


def test_request_timeout_aborts_the_engine_requests_at_once():
    engine = FakeEngine(step_delay=0.02, max_model_len=10**5)
    app = make_app(engine, request_timeout=0.5)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as client:
            body = {"prompt": "x", "max_tokens": 5000, "ignore_eos": True}
            full = await client.post("/v1/completions", json=body)
            aborted_after_full = list(engine.aborted)
            stream = await client.post("/v1/completions", json={**body, "stream": True})
            quick = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            return full, aborted_after_full, stream, quick

    full, aborted_after_full, stream, quick = asyncio.run(main())
    error = check_error(full, 408, code="request_timeout")["error"]
    assert error["type"] == "timeout" and "0.5 s" in error["message"], error
    assert len(aborted_after_full) == 1  # aborted before the 408 was sent
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"type": "timeout"' in events[-2], events[-3:]
    assert len(engine.aborted) == 2 and not set(engine.aborted) & set(engine.finished)
    assert quick.status_code == 200 and quick.json()["choices"][0]["finish_reason"] == "length"
