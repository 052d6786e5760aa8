"""Prometheus metrics, named as vLLM names them (prefix ``gptserve:``).

Engine figures (running, waiting, KV usage, token and prefix-cache counts, preemptions) are
read from ``engine.stats()`` at scrape time; latencies and outcomes are observed by serving and
by ``MetricsMiddleware``. Each app has its own ``CollectorRegistry``, so tests can build many.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_type_of

PREFIX = "gptserve:"
# seconds; TTFT and end-to-end cover CPU runs too, which are slow
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class EngineStatsCollector(Collector):
    """Gauges and counters read from ``engine.stats()`` when Prometheus scrapes."""

    def __init__(self, get_engine: Callable[[], object | None]) -> None:
        self.get_engine = get_engine

    def collect(self) -> Iterator:
        engine = self.get_engine()
        stats = engine.stats() if engine is not None else {}
        get = lambda key: float(stats.get(key, 0))  # noqa: E731
        yield GaugeMetricFamily(PREFIX + "num_requests_running", "Sequences in the running batch.",
                                value=get("num_running"))
        yield GaugeMetricFamily(PREFIX + "num_requests_waiting", "Sequences waiting to be scheduled.",
                                value=get("num_waiting"))
        total = get("num_total_blocks")
        usage = (total - get("num_free_blocks")) / total if total else 0.0
        yield GaugeMetricFamily(PREFIX + "kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
                                value=usage)
        yield GaugeMetricFamily(PREFIX + "num_free_kv_blocks", "KV cache blocks free.", value=get("num_free_blocks"))
        counters = {
            "prompt_tokens": ("num_prompt_tokens", "Prefill tokens processed."),
            "generation_tokens": ("num_generation_tokens", "Generated tokens."),
            "num_preemptions": ("num_preemptions", "Sequences preempted for lack of KV blocks, or to give a waiting request a slot."),
            "prefix_cache_queries": ("num_prefix_queries", "Prompt tokens looked up in the prefix cache."),
            "prefix_cache_hits": ("num_prefix_hits", "Prompt tokens found in the prefix cache."),
        }
        for name, (key, text) in counters.items():
            yield CounterMetricFamily(PREFIX + name, text, value=get(key))


class ServerMetrics:
    """The registry of one app, and the observations serving makes."""

    def __init__(self, get_engine: Callable[[], object | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(get_engine))
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "Arrival to first generated token.",
            buckets=_TTFT_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between consecutive outputs of a sequence.",
            buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e_request_latency = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Arrival to the last output.",
            buckets=_E2E_BUCKETS, registry=self.registry)
        self.request_success = Counter(
            PREFIX + "request_success", "Choices finished, by finish_reason.", ["finish_reason"],
            registry=self.registry)
        self.request_errors = Counter(
            PREFIX + "request_errors", "Requests answered with an error (status, or an in-stream error).",
            ["status", "type"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def error(self, status: int, type: str | None = None) -> None:
        self.request_errors.labels(status=str(status), type=type or error_type_of(status)).inc()

    def timer(self) -> "RequestTimer":
        return RequestTimer(self)


class RequestTimer:
    """Latencies of one HTTP request: TTFT and inter-token gaps per engine request ``k``."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.arrival = time.perf_counter()
        self.last: dict[int, float] = {}

    def output(self, k: int) -> None:
        now = time.perf_counter()
        if k in self.last:
            self.metrics.inter_token_latency.observe(now - self.last[k])
        else:
            self.metrics.time_to_first_token.observe(now - self.arrival)
        self.last[k] = now

    def finished(self, finish_reasons: dict[int, str]) -> None:
        self.metrics.e2e_request_latency.observe(time.perf_counter() - self.arrival)
        for reason in finish_reasons.values():
            self.metrics.request_success.labels(finish_reason=reason).inc()


class MetricsMiddleware:
    """Counts every HTTP error response (4xx/5xx) by status and OpenAI error type."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.error(message["status"])
            await send(message)

        await self.app(scope, receive, send_and_count)
