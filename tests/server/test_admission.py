"""Admission: past running + queued, 429 with Retry-After before the body is read; draining → 503."""
from __future__ import annotations

import asyncio

import httpx

from server.app import create_app
from server.serving import OpenAIServing
from server.settings import Settings
from tests.server.fake_engine import FakeEngine
from tests.server.helpers import check_error


def make_app(engine: FakeEngine, **settings):
    app = create_app(Settings(_env_file=None, served_model_name=["m"], **settings), engine=engine)
    app.state.serving = OpenAIServing(engine, ["m"], metrics=app.state.metrics)  # what the lifespan would do
    return app


def test_over_the_cap_gets_429_before_parsing():
    engine = FakeEngine(step_delay=0.01)
    app = make_app(engine, max_num_seqs=1, max_queued_requests=1)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = [client.post("/v1/completions", json={"prompt": "x", "max_tokens": 20}) for _ in range(2)]
            tasks = [asyncio.create_task(c) for c in ok]
            await asyncio.sleep(0.05)
            refused = await client.post("/v1/completions", content=b"not even json")  # never parsed
            return refused, await asyncio.gather(*tasks), app.state.admission.num_in_flight

    refused, done, num_in_flight = asyncio.run(main())
    check_error(refused, 429, code="server_overloaded")
    assert refused.json()["error"]["type"] == "overloaded" and refused.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200] and num_in_flight == 0


def test_draining_refuses_new_requests_but_probes_and_metrics_answer():
    app = make_app(FakeEngine())
    app.state.admission.is_draining = True

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            check_error(await client.post("/v1/completions", json={"prompt": "x"}), 503, code="server_shutting_down")
            check_error(await client.get("/v1/models"), 503, code="server_shutting_down")
            check_error(await client.get("/ready"), 503)
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200

    asyncio.run(main())
