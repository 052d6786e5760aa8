"""Scraping /metrics and streaming completions, for the reliability tests."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.helpers import parse_sse


def scrape(url: str, headers: dict) -> dict[str, float]:
    """{"name{label=value,...}": value} for every sample /metrics shows."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def stream_completion(client: httpx.AsyncClient, **body) -> list:
    """POST a streaming /v1/completions; the parsed events (ending "[DONE]")."""
    async with client.stream("POST", "/v1/completions", json={"stream": True, **body}) as response:
        assert response.status_code == 200, await response.aread()
        return parse_sse((await response.aread()).decode())
