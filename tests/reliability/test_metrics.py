"""/metrics after real traffic: every metric README lists has moved (tiny model, small KV pool)."""
from __future__ import annotations

import asyncio

import httpx

from tests.reliability.conftest import kv_gb
from tests.reliability.helpers import scrape, stream_completion
from tests.server.helpers import check_stream

P = "gptserve:"
PROMPT = "The scheduler batches prefill and decode steps; blocks of the cache are shared by prefixes."


def test_every_metric_moves_after_traffic(start_server):
    # 24 blocks = 384 tokens for 8 sequences of ~130 tokens: some must be preempted
    server = start_server("--kv-cache-memory-gb", kv_gb(24), "--max-num-seqs", "8", "--max-model-len", "256")
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # protected by default
    before = scrape(server.url, server.headers)
    peaks: dict[str, float] = {}

    async def sample_gauges(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(headers=server.headers) as client:
            while not stop.is_set():
                text = (await client.get(f"{server.url}/metrics")).text
                for line in text.splitlines():
                    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
                        if line.startswith(P + name + " "):
                            peaks[name] = max(peaks.get(name, 0.0), float(line.split()[1]))
                await asyncio.sleep(0.02)

    async def traffic() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as client:
            warm = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
            assert warm.status_code == 200, warm.text  # fills the prefix cache
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_gauges(stop))
            results = await asyncio.gather(*(stream_completion(
                client, prompt=PROMPT, max_tokens=100, ignore_eos=True, temperature=0) for _ in range(8)))
            stop.set()
            await sampler
            for events in results:
                check_stream(events)
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": -1})).status_code == 400

    asyncio.run(traffic())
    after = scrape(server.url, server.headers)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert peaks.get(name, 0) > 0, (name, peaks)
    for name in ("prompt_tokens_total", "generation_tokens_total", "num_preemptions_total",
                 "prefix_cache_queries_total", "prefix_cache_hits_total",
                 "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                 "e2e_request_latency_seconds_count", "request_success_total{finish_reason=length}",
                 "request_errors_total{status=400,type=invalid_request_error}"):
        assert after.get(P + name, 0) > before.get(P + name, 0), (name, before.get(P + name), after.get(P + name))
    assert after[P + "generation_tokens_total"] >= 8 * 100
    assert after[P + "num_free_kv_blocks"] == 24  # everything freed
