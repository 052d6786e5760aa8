"""Twice the cap at once: the excess gets 429 with Retry-After, every admitted request finishes."""
from __future__ import annotations

import asyncio

import httpx

from tests.server.helpers import check_stream, parse_sse
from tests.spec_validator import validate_error


def test_twice_the_cap_at_once(start_server):
    server = start_server("--max-num-seqs", "2", "--max-queued-requests", "2", "--max-model-len", "256")
    cap = 4

    async def one(client: httpx.AsyncClient, stream: bool):
        body = {"prompt": "Hello", "max_tokens": 200, "ignore_eos": True, "temperature": 0, "stream": stream}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            return response.status_code, response.headers, await response.aread()

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, stream=i % 2 == 0) for i in range(2 * cap))), timeout=60)

    results = asyncio.run(main())
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * cap + [429] * cap, statuses
    for status, headers, body in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            error = validate_error(httpx.Response(429, content=body).json())["error"]
            assert error["type"] == "overloaded" and error["code"] == "server_overloaded", error
        elif body.startswith(b"data:"):
            check_stream(parse_sse(body.decode()))
        else:
            assert httpx.Response(200, content=body).json()["choices"][0]["finish_reason"] == "length"
    # the slots are free again
    r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 200, r.text
