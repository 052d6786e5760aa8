"""SIGTERM with streams in flight: they finish with [DONE], new requests get 503, exit code 0."""
from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.reliability.helpers import stream_completion
from tests.server.helpers import check_stream


def test_sigterm_drains_streams_then_exits_zero(start_server):
    server = start_server("--max-model-len", "4096", "--drain-timeout", "30")

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
            streams = [asyncio.create_task(stream_completion(
                client, prompt="Hello", max_tokens=1000, ignore_eos=True, temperature=0)) for _ in range(4)]
            for _ in range(200):  # until all four are generating
                metrics = (await client.get("/metrics")).text
                if "gptserve:num_requests_running 4.0" in metrics:
                    break
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/health")).status_code == 200
            late = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down", late.text
            assert not any(s.done() for s in streams), "the streams should still be running"
            return await asyncio.gather(*streams)

    for events in asyncio.run(main()):
        texts = check_stream(events)  # every choice has its finish_reason, and [DONE] came
        assert events[-2]["choices"][0]["finish_reason"] == "length" and texts[0]
    assert server.proc.wait(timeout=30) == 0, server.log_text()


def test_sigterm_while_the_weights_load_exits_zero_at_once(start_server):
    # the load takes a minute (a test-only delay before it): SIGTERM half-way stops the server promptly
    server = start_server("--fault-injection-load-seconds", "60", wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # up and answering, the model still loading
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/ready", timeout=2).status_code == 503  # still loading
    server.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert server.proc.wait(timeout=10) == 0, server.log_text()
    assert time.monotonic() - start < 5, server.log_text()  # no supervisor's grace period needed


def test_a_model_that_fails_to_load_ends_the_process(tmp_path):
    """A broken model file: the load's error is logged and the process exits non-zero for its
    supervisor, rather than staying up forever with /ready at 503."""
    from tests.server_process import launch_server, log_tail, stop_server

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # a GGUF header, then nonsense
    log = tmp_path / "server.log"
    _, proc = launch_server(["--model", str(broken)], None, log)
    try:
        code = proc.wait(timeout=120)
    finally:
        stop_server(proc, timeout=0)
    assert code != 0, log_tail(log)
    assert "failed to load" in log_tail(log)
