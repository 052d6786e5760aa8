"""An oversize body gets its 413 and OpenAI error body every time, never a connection reset:
the server drains the rest of the body before it closes. Repeated, since a reset is a race."""
from __future__ import annotations

import json
import socket

import httpx

from tests.reliability.conftest import API_KEY
from tests.reliability.test_hostile_requests import chunked, send_raw
from tests.spec_validator import validate_error

LIMIT = 65536


def check_413(status: int, payload: bytes) -> None:
    assert status == 413, (status, payload[:300])
    error = validate_error(json.loads(payload))["error"]
    assert error["code"] == "request_too_large" and str(LIMIT) in error["message"], error


def send_blind(port: int, body: bytes) -> tuple[int, bytes]:
    """Write the whole request before reading anything, asking the server to close after it."""
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)  # a reset here or below is the failure this test is about
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def test_oversize_bodies_always_get_413(start_server):
    server = start_server("--max-model-len", "256", "--max-request-body-bytes", str(LIMIT))
    big = b'{"prompt": "' + b"a" * (16 * LIMIT) + b'"}'
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        for _ in range(10):
            # a client that stops sending once the answer comes (as curl does)
            check_413(*send_raw(server.port, "POST", "/v1/completions", big, {}))
            check_413(*send_raw(server.port, "POST", "/v1/completions", chunked(big),
                                {"Content-Length": "", "Transfer-Encoding": "chunked"}))
            check_413(*send_blind(server.port, big))
            # one that writes the whole body before it reads (httpx, requests, the openai client)
            response = client.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
            check_413(response.status_code, response.content)
            response = client.post("/v1/chat/completions", content=b"x" * (LIMIT + 1))  # just over
            check_413(response.status_code, response.content)
        ok = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
        assert ok.status_code == 200, ok.text
