"""Cheap denial of service, as small bounded load tests on loopback against one real server
(tiny model) shared by the whole module: every limit holds, and /health keeps answering."""
from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time

import httpx
import pytest

from tests.reliability.conftest import ServerProcess
from tests.spec_validator import validate_error

MAX_NUM_SEQS = 8
MAX_LOGPROBS = 10_000
MAX_IN_FLIGHT = MAX_NUM_SEQS + 8  # --max-queued-requests 8
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 2.0
MAX_HEADER_BYTES = 16384  # the default
MAX_CONNECTIONS = 48


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    proc = ServerProcess(tiny_model, tmp_path_factory.mktemp("dos") / "server.log",
                         "--max-model-len", "512", "--max-num-seqs", str(MAX_NUM_SEQS),
                         "--max-queued-requests", "8", "--max-logprobs-per-request", str(MAX_LOGPROBS),
                         "--body-timeout", str(BODY_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT),
                         "--max-connections", str(MAX_CONNECTIONS))
    proc.wait_ready()
    yield proc
    proc.stop()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return validate_error(response.json())["error"]


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
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    status = client.get(f"{self.url}/health").status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - start)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worst(self) -> float:
        return max(self.latencies)


# ----- 1: the request head, idle connections, the number of connections ----------------------

FLOOD_MAX_BYTES = 16 << 20


def flood(port: int, head: bytes, filler: bytes, max_bytes: int = FLOOD_MAX_BYTES) -> tuple[bytes, int]:
    """Send ``head`` then ``filler`` without end until the server answers or closes (or
    ``max_bytes`` went out): (its answer, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head)
        num_sent = len(head)
        try:
            while num_sent < max_bytes and not select.select([sock], [], [], 0)[0]:
                sock.sendall(filler)
                num_sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return read_response(sock), num_sent
        except ConnectionResetError:
            return b"(reset)", num_sent


@pytest.mark.parametrize("head, status", [
    (b"GET /", 414),  # an endless URL
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", 431),  # one endless header value
    (b"GET / HTTP/1.1\r\nHost: x\r\n", 431),  # endless headers
])
def test_an_endless_request_head_is_refused_within_its_limit(server, head, status):
    filler = b"a" * 4096 if status == 414 or b"X-Long" in head else b"X-Pad: " + b"a" * 4000 + b"\r\n"
    results = []
    with HealthProbe(server.url) as probe:
        threads = [threading.Thread(target=lambda: results.append(flood(server.port, head, filler))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # answered with the status; a client that kept writing megabytes past the answer may see the
    # connection reset instead (the server drops a bounded amount of it before closing)
    assert any(answer.startswith(b"HTTP/1.1 %d " % status) for answer, _ in results), results[0][0][:200]
    for answer, num_sent in results:
        assert answer.startswith(b"HTTP/1.1 %d " % status) or answer == b"(reset)", answer[:200]
        # answered long before the flood's end: the limit plus what the sockets' buffers hold
        assert num_sent < FLOOD_MAX_BYTES // 2
    assert probe.worst < 1.0 and not probe.failures


def test_a_head_over_the_limit_in_one_piece_never_reaches_the_app(server):
    head = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + server.headers["Authorization"].encode()
            + b"\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"object": "list"' not in answer, answer[:300]
    ok = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fine: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(ok)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_unfinished_heads_are_closed_after_the_header_timeout(server):
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=15) for _ in range(10)]
    try:
        start = time.perf_counter()
        for sock in sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answers = [read_response(sock) for sock in sockets]
        elapsed = time.perf_counter() - start
    finally:
        for sock in sockets:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0][:200]
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 5


def test_connections_past_the_cap_are_refused_at_once(server):
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=15) for _ in range(MAX_CONNECTIONS + 5)]
    try:
        time.sleep(0.5)  # the server has seen them all
        refused = [s for s in sockets if select.select([s], [], [], 0)[0]]
        answers = [read_response(s) for s in refused]
        assert len(refused) >= 5 and all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers[:1]
        # the idle ones (no byte sent) are closed by the header timeout: the server is free again
        for sock in sockets:
            read_response(sock)
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


# ----- 2 and 3: what one request may ask for -------------------------------------------------

def test_more_sequences_than_the_scheduler_runs_is_a_400_naming_the_limit(server):
    for body in ({"prompt": "Hi", "n": MAX_NUM_SEQS + 1},
                 {"prompt": ["a", "b", "c"], "n": 3},  # prompts × n
                 {"prompt": "Hi", "n": 1, "best_of": MAX_NUM_SEQS + 1}):
        r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, json={"max_tokens": 2, **body})
        error = error_of(r, 400)
        assert error["code"] == "too_many_sequences" and error["param"] == "n", error
        assert str(MAX_NUM_SEQS) in error["message"] and "--max-sequences-per-request" in error["message"]
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, json={
        "messages": [{"role": "user", "content": "hi"}], "n": MAX_NUM_SEQS + 1, "max_tokens": 2})
    assert error_of(chat, 400)["code"] == "too_many_sequences"


def test_echoed_logprobs_past_the_output_budget_are_a_400(server):
    # the request, scaled: a short body asking for n × prompt × (logprobs + 1) entries
    body = {"prompt": [28] * 400, "n": MAX_NUM_SEQS, "echo": True, "logprobs": 5, "max_tokens": 0}
    with HealthProbe(server.url) as probe:
        r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, json=body, timeout=30)
    error = error_of(r, 400)
    assert error["code"] == "too_many_logprobs" and error["param"] == "logprobs", error
    assert str(MAX_LOGPROBS) in error["message"] and "--max-logprobs-per-request" in error["message"]
    assert probe.worst < 1.0 and not probe.failures
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, json={
        "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 20, "max_tokens": 480})
    assert error_of(chat, 400)["code"] == "too_many_logprobs"


def test_echoed_logprobs_within_the_budget_are_the_same_in_every_choice(server):
    body = {"prompt": [28, 29, 30] * 100, "n": 3, "echo": True, "logprobs": 2, "max_tokens": 0}
    r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, json=body, timeout=30)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 3
    first = choices[0]["logprobs"]
    assert len(first["tokens"]) == 300 and first["token_logprobs"][0] is None
    assert first["text_offset"] == sorted(first["text_offset"])
    assert all(c["logprobs"] == first and c["text"] == choices[0]["text"] for c in choices)


def test_one_requests_fan_out_delays_another_request_by_a_bounded_amount(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as client:
            big_done = asyncio.Event()

            async def big():
                body = {"prompt": "Hello", "n": MAX_NUM_SEQS, "max_tokens": 480, "ignore_eos": True,
                        "temperature": 1.0, "seed": 1, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    num_events, finished = 0, {}
                    async for line in response.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        num_events += 1
                        if num_events == 2 * MAX_NUM_SEQS:  # every choice is generating
                            started.set()
                        for choice in json.loads(line[6:])["choices"]:
                            if choice["finish_reason"]:
                                finished[choice["index"]] = choice["finish_reason"]
                big_done.set()
                return finished

            started = asyncio.Event()
            big_task = asyncio.create_task(big())
            await asyncio.wait_for(started.wait(), 60)
            start = time.perf_counter()
            short = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "ignore_eos": True,
                                                               "temperature": 0})
            latency = time.perf_counter() - start
            was_big_running = not big_done.is_set()
            finished = await big_task
            return short, latency, was_big_running, finished

    short, latency, was_big_running, finished = asyncio.run(main())
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 4, short.text
    # a slot is handed over within a step or two, not after the fan-out's 8 × 480 tokens
    assert was_big_running, "the short request waited for the whole fan-out"
    assert latency < 2.0, latency
    assert finished == {i: "length" for i in range(MAX_NUM_SEQS)}  # and the fan-out lost nothing


# ----- 4: slow bodies ---------------------------------------------------------------------------

def read_response(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_bodies_hold_no_admission_slot_and_time_out_with_408(server):
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.headers['Authorization'][7:]}"
            f"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    sockets = []
    try:
        for _ in range(MAX_IN_FLIGHT + 4):  # more than every slot there is
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            sock.sendall(head + b'{"pro')
            sockets.append(sock)
        start = time.perf_counter()
        with HealthProbe(server.url) as probe:
            r = httpx.post(f"{server.url}/v1/completions", headers=server.headers,
                           json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
            assert r.status_code == 200, r.text  # the slow ones hold no slot
            answers = [read_response(sock) for sock in sockets]  # each ends with the server closing
        elapsed = time.perf_counter() - start
    finally:
        for sock in sockets:
            sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"body_timeout" in answer
    assert elapsed < BODY_TIMEOUT + 5
    assert probe.worst < 1.0 and not probe.failures


# ----- 5: tokenizing and templating off the event loop ----------------------------------------

def test_megabyte_prompts_do_not_stall_the_event_loop(server):
    text = "hello world, what a day " * 20_000  # ~0.5 MB
    messages = [{"role": "user", "content": text}]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as client:
            return await asyncio.gather(
                client.post("/tokenize", json={"prompt": text}),
                client.post("/tokenize", json={"messages": messages}),
                client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}),
                client.post("/v1/completions", json={"prompt": text, "max_tokens": 1}))

    with HealthProbe(server.url) as probe:
        responses = asyncio.run(main())
    for r in responses[:2]:
        assert r.status_code == 200 and r.json()["count"] > 50_000, r.text[:300]
    for r in responses[2:]:  # too long for the context: a 400 after tokenizing, not a stall
        assert error_of(r, 400)["code"] == "context_length_exceeded"
    assert len(probe.latencies) >= 3 and probe.worst < 1.0, probe.latencies
    assert not probe.failures


def test_tokenize_and_detokenize_are_under_admission(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as client:
            started = [asyncio.Event() for _ in range(MAX_IN_FLIGHT)]

            async def hold(k: int):  # a stream that takes one admission slot until cancelled
                body = {"prompt": "Hello", "max_tokens": 480, "ignore_eos": True, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    started[k].set()
                    async for _ in response.aiter_bytes():
                        pass

            holders = [asyncio.create_task(hold(k)) for k in range(MAX_IN_FLIGHT)]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
                return (await client.post("/tokenize", json={"prompt": "hi"}),
                        await client.post("/detokenize", json={"tokens": [30, 31]}))
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)

    for r in asyncio.run(main()):
        assert error_of(r, 429)["code"] == "server_overloaded"
    assert httpx.post(f"{server.url}/tokenize", headers=server.headers, json={"prompt": "hi"}).status_code == 200
