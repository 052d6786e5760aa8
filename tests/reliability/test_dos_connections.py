"""Cheap denial of service at the connection level, as small bounded floods on loopback against
the shared tiny-model server (``dos_server``): endless heads, unfinished heads, too many
connections, slow bodies. Each is refused within its limit while /health keeps answering."""
from __future__ import annotations

import select
import socket
import threading
import time

import httpx
import pytest

from tests.reliability.conftest import (DOS_BODY_TIMEOUT, DOS_HEADER_TIMEOUT, DOS_MAX_CONNECTIONS,
                                        DOS_MAX_HEADER_BYTES, DOS_MAX_IN_FLIGHT)
from tests.reliability.helpers import HealthProbe, read_response

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
def test_an_endless_request_head_is_refused_within_its_limit(dos_server, head, status):
    filler = b"a" * 4096 if status == 414 or b"X-Long" in head else b"X-Pad: " + b"a" * 4000 + b"\r\n"
    results = []
    with HealthProbe(dos_server.url) as probe:
        threads = [threading.Thread(target=lambda: results.append(flood(dos_server.port, head, filler))) for _ in range(8)]
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


def test_a_head_over_the_limit_in_one_piece_never_reaches_the_app(dos_server):
    head = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + dos_server.headers["Authorization"].encode()
            + b"\r\nX-Big: " + b"a" * DOS_MAX_HEADER_BYTES + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", dos_server.port), timeout=15) as sock:
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"object": "list"' not in answer, answer[:300]
    ok = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fine: " + b"a" * (DOS_MAX_HEADER_BYTES // 2) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", dos_server.port), timeout=15) as sock:
        sock.sendall(ok)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_unfinished_heads_are_closed_after_the_header_timeout(dos_server):
    sockets = [socket.create_connection(("127.0.0.1", dos_server.port), timeout=15) for _ in range(10)]
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
    assert DOS_HEADER_TIMEOUT - 0.5 < elapsed < DOS_HEADER_TIMEOUT + 5


def test_connections_past_the_cap_are_refused_at_once(dos_server):
    sockets = [socket.create_connection(("127.0.0.1", dos_server.port), timeout=15) for _ in range(DOS_MAX_CONNECTIONS + 5)]
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
    assert httpx.get(f"{dos_server.url}/health", timeout=5).status_code == 200


# ----- 4: slow bodies ---------------------------------------------------------------------------

def test_slow_bodies_hold_no_admission_slot_and_time_out_with_408(dos_server):
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dos_server.headers['Authorization'][7:]}"
            f"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    sockets = []
    try:
        for _ in range(DOS_MAX_IN_FLIGHT + 4):  # more than every slot there is
            sock = socket.create_connection(("127.0.0.1", dos_server.port), timeout=15)
            sock.sendall(head + b'{"pro')
            sockets.append(sock)
        start = time.perf_counter()
        with HealthProbe(dos_server.url) as probe:
            r = httpx.post(f"{dos_server.url}/v1/completions", headers=dos_server.headers,
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
    assert elapsed < DOS_BODY_TIMEOUT + 5
    assert probe.worst < 1.0 and not probe.failures
