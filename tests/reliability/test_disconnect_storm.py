"""64 concurrent streams, a third dropped at random points (some before any token): within 2 s
every KV block is free, the others finish equal to a solo greedy run, /health is 200."""
from __future__ import annotations

import asyncio
import random
import time

import httpx

from tests.reliability.conftest import kv_gb
from tests.reliability.helpers import scrape, stream_completion
from tests.server.helpers import check_stream

PROMPTS = ["The quick brown fox", "What is the capital of France?", "Hello, world!", "Models read tokens"]
BODY = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}


async def drop(client: httpx.AsyncClient, prompt: str, how: int, rng: random.Random) -> None:
    body = {"prompt": prompt, "stream": True, **BODY}
    if how == 0:  # gone before (or while) the response starts
        task = asyncio.create_task(client.post("/v1/completions", json=body))
        await asyncio.sleep(rng.uniform(0, 0.05))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    async with client.stream("POST", "/v1/completions", json=body) as response:
        num_events = 0 if how == 1 else rng.randint(1, 10)  # 1: headers only, no token yet
        async for line in response.aiter_lines():
            if num_events == 0:
                break
            num_events -= line.startswith("data:")
    # leaving the block closes the connection mid-stream


def test_disconnect_storm(start_server):
    server = start_server("--max-num-seqs", "64", "--kv-cache-memory-gb", kv_gb(256), "--max-model-len", "256")
    rng = random.Random(0)

    async def main():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120, limits=limits) as client:
            solo = {p: check_stream(await stream_completion(client, prompt=p, **BODY))[0] for p in PROMPTS}
            jobs, expected = [], []
            for i in range(64):
                prompt = PROMPTS[i % len(PROMPTS)]
                if i % 3 == 0:
                    jobs.append(drop(client, prompt, how=(i // 3) % 3, rng=rng))
                else:
                    jobs.append(stream_completion(client, prompt=prompt, **BODY))
                    expected.append(solo[prompt])
            results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)
            return [r for r in results if r is not None], expected

    streams, expected = asyncio.run(main())
    assert [check_stream(events)[0] for events in streams] == expected
    deadline = time.monotonic() + 2
    while True:
        metrics = scrape(server.url, server.headers)
        idle = (metrics["gptserve:kv_cache_usage_perc"] == 0 and metrics["gptserve:num_requests_running"] == 0
                and metrics["gptserve:num_requests_waiting"] == 0)
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert idle, {k: v for k, v in metrics.items() if "num_" in k or "kv_" in k}
    assert httpx.get(f"{server.url}/health").status_code == 200
