"""An injected engine fault at step k: in-flight requests fail with an error, the process exits
non-zero (for a supervisor to restart it), nothing hangs."""
from __future__ import annotations

import asyncio

import httpx

from tests.server.helpers import parse_sse
from tests.spec_validator import validate_error


def test_engine_death_fails_in_flight_requests_and_exits_non_zero(start_server):
    server = start_server("--max-model-len", "512", "--fault-injection-step", "30")

    async def one(client: httpx.AsyncClient, stream: bool):
        body = {"prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "stream": stream}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            return response.status_code, await response.aread()

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i % 2 == 0) for i in range(4))), 30)

    for status, body in asyncio.run(main()):
        if body.startswith(b"data:"):
            events = parse_sse(body.decode())
            assert status == 200 and events[-1] == "[DONE]"
            error = validate_error(events[-2])["error"]
        else:
            assert status == 503, body
            error = validate_error(httpx.Response(status, content=body).json())["error"]
        assert error["type"] == "service_unavailable", error
    assert server.proc.wait(timeout=30) == 1, server.log_text()
    assert "engine loop died" in server.log_text()
