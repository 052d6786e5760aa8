"""Log lines escape control characters from request fields: a path, a header or a model name
carrying "\\n[fake] injected" or an ANSI escape cannot forge a log line or recolour the log."""
from __future__ import annotations

import io
import logging
import socket

import pytest

from server.logfilter import escape_control_chars, install_log_sanitizer
from tests.reliability.conftest import API_KEY

HOSTILE = "evil\n[fake] injected\r\x1b[31mred\x85nel\u2028ls\u2029ps\x9bcsi\u202eltr\x00"
RAW = ("\n", "\r", "\x1b", "\x85", "\u2028", "\u2029", "\x9b", "\u202e", "\x00")


def assert_no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text.replace("\n", "") if char == "\n" else char not in text, repr(char)
    for line in text.splitlines():
        assert not line.startswith("[fake]"), line


@pytest.fixture
def captured():
    install_log_sanitizer()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("gptserve.test_log_injection")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_escape_control_chars():
    assert escape_control_chars("a\nb\r\x1b[31m\x85\u2028\t") == "a\\nb\\r\\x1b[31m\\x85\\u2028\\t"
    assert escape_control_chars("plain text, é, 漢字") == "plain text, é, 漢字"


def test_records_are_escaped_message_args_and_exception(captured):
    logger, stream = captured
    logger.info("model %s not found", HOSTILE)
    logger.info("fields %(model)s", {"model": HOSTILE})
    logger.info(HOSTILE)
    logger.info("count %d, ratio %.1f, object %s", 3, 0.5, ValueError(HOSTILE))
    try:
        try:
            raise KeyError(HOSTILE)
        except KeyError as exc:
            raise ValueError(f"bad model {HOSTILE}") from exc
    except ValueError:
        logger.exception("request failed: %s", HOSTILE)
    text = stream.getvalue()
    lines = text.splitlines()
    # 4 one-line records, then the exception record: its message line, two tracebacks and the link
    assert [line.split(" ", 1)[0] for line in lines[:5]] == ["INFO"] * 4 + ["ERROR"], lines[:6]
    assert "count 3, ratio 0.5" in text and "\\n[fake] injected\\r\\x1b[31mred\\x85nel\\u2028ls" in text
    assert "The above exception was the direct cause" in text and text.count("Traceback") == 2
    assert_no_raw_controls(text)


def test_uvicorn_access_log_is_escaped(captured):
    from uvicorn.logging import AccessFormatter

    logger, stream = captured
    logger.handlers[0].setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                                    use_colors=False))
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/v1/" + HOSTILE, "1.1", 404)
    text = stream.getvalue()
    assert text.count("\n") == 1 and "404" in text and "\\x1b[31m" in text
    assert_no_raw_controls(text)


def send(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def test_hostile_request_fields_do_not_reach_the_log_raw(start_server):
    server = start_server("--max-model-len", "256", "--log-level", "debug")
    evil_path = "/v1/completions%0A%5Bfake%5D%20injected%1B%5B31m%E2%80%A8"
    evil_model = '"m\\n[fake] injected\\u001b[31m\\u2028"'  # JSON escapes: the field holds the raw characters
    responses = {}
    for path, body, user_agent in [
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "model": ' + evil_model.encode() + b"}", b"ua"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2}', b"agent\x1b[31m red \x9b\x85 end"),
        (evil_path, b'{"prompt": "hi"}', b"ua"),
        ("/v1/models?q=%0A%5Bfake%5D%1B", b"", b"ua"),
    ]:
        method = b"POST" if body else b"GET"
        head = (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                b"User-Agent: " + user_agent + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        response = send(server.port, head + body)
        assert response.startswith(b"HTTP/1.1 "), response[:200]
        responses[user_agent] = response
    server.stop()
    text = server.log.read_bytes().decode("utf-8", errors="replace")
    evil_agent = b"agent\x1b[31m red \x9b\x85 end"
    if responses[evil_agent].startswith(b"HTTP/1.1 400"):
        # httptools (uvicorn's parser when installed) refuses control characters in a header value,
        # as RFC 9110 does: the request never reaches the app, and the log has only its warning
        assert "red \\x9b" not in text and "Invalid HTTP request" in text, text[-3000:]
    else:  # h11 lets it through: the app logs it (at debug), escaped
        assert "agent\\x1b[31m red \\x9b\\x85 end" in text, text[-3000:]
    assert "completions%0A%5Bfake%5D%20injected%1B" in text, text[-3000:]  # the access log's line
    assert_no_raw_controls(text)
