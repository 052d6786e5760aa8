"""Scraping /metrics and streaming completions, for the reliability tests."""
from __future__ import annotations

import socket
import threading
import time

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


class HealthProbe:
    """GET /health every 50 ms on its own thread while a load runs; ``worst`` is the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while True:  # at least one answer, even when the load is over before the thread starts
                start = time.perf_counter()
                try:
                    status = client.get(f"{self.url}/health").status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - start)
                if self._stop.wait(0.05):
                    return

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worst(self) -> float:
        return max(self.latencies)


def read_response(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
