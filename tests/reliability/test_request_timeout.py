"""--request-timeout on a real server: a short timeout, a long max_tokens. A full response is a
408 of type "timeout"; a stream gets an error event, then [DONE]; the engine requests are
aborted at once (no sequence running, every KV block free); a short request still succeeds.

The built-in SmolLM2-135M, not the tiny model: on CPU it decodes some tens of tokens a second,
so 1,500 tokens take far longer than the 3 s timeout however fast the machine, and 4 tokens far
less however slow.
"""
from __future__ import annotations

import time

import httpx

from tests.reliability.conftest import API_KEY
from tests.reliability.helpers import scrape
from tests.server.helpers import parse_sse
from tests.server_process import running_server
from tests.spec_validator import validate_error

LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def wait_idle(url: str, headers: dict, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(url, headers)
        if (metrics["gptserve:num_requests_running"] == 0 and metrics["gptserve:num_requests_waiting"] == 0
                and metrics["gptserve:kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            return metrics


def test_request_timeout_full_and_streamed(tmp_path):
    args = ["--request-timeout", "3", "--max-model-len", "2048", "--kv-cache-memory-gb", "0.25"]
    env = {"GPTSERVE_API_KEY": API_KEY}
    with running_server(args, env, log_path=tmp_path / "server.log") as (url, proc, log):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            quick = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
            assert quick.status_code == 200, quick.text

            start = time.monotonic()
            full = client.post("/v1/completions", json={"prompt": "Once upon a time", **LONG})
            assert full.status_code == 408, full.text
            assert time.monotonic() - start < 60  # cut at the timeout, not after 1,500 tokens
            error = validate_error(full.json())["error"]
            assert error["type"] == "timeout" and error["code"] == "request_timeout", error
            metrics = wait_idle(url, headers)
            assert metrics["gptserve:num_requests_running"] == 0 and metrics["gptserve:kv_cache_usage_perc"] == 0

            body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True, **LONG}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                events = parse_sse(response.read().decode())
            assert events[-1] == "[DONE]", events[-3:]
            error = validate_error(events[-2])["error"]
            assert error["type"] == "timeout" and error["code"] == "request_timeout", error
            assert any(e["choices"] and e["choices"][0]["delta"].get("content") for e in events[:-2])  # it ran
            assert all(c["finish_reason"] is None for e in events[:-2] for c in e["choices"])
            metrics = wait_idle(url, headers)
            assert metrics["gptserve:num_requests_running"] == 0 and metrics["gptserve:kv_cache_usage_perc"] == 0
            assert metrics["gptserve:request_errors_total{status=408,type=timeout}"] == 2

            again = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                              "max_tokens": 4})
            assert again.status_code == 200, again.text
        assert "past the request timeout" in log.read_text()
