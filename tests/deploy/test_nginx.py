"""docker/nginx.conf under a real nginx (Debian's): `nginx -t`, and the balancer in front of two
gptserve processes on loopback: requests spread over both, streams pass through unbuffered."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .helpers import (INSTALL_HINT, REPO, find_tool, free_port, nginx_cmd, render_nginx_conf,
                      server_cli_ready, stop, wait_http_ok)

API_KEY = "sk-deploy-test"


@pytest.fixture(scope="module")
def nginx():
    path = find_tool("nginx")
    if path is None:
        pytest.skip(f"nginx not found (Debian package nginx): {INSTALL_HINT}")
    return path


def test_nginx_t(nginx, tmp_path):
    conf = render_nginx_conf(upstreams=["127.0.0.1:18001", "127.0.0.1:18002"],
                             listen=f"127.0.0.1:{free_port()}", workdir=tmp_path)
    res = subprocess.run(nginx_cmd(nginx, conf, tmp_path, "-t"), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    assert "test is successful" in res.stderr


@pytest.fixture(scope="module")
def balanced(nginx, tmp_path_factory):
    """Two `python -m server serve` processes and nginx (docker/nginx.conf) in front of them."""
    ok, why = server_cli_ready()
    if not ok:
        pytest.skip(f"the server is not runnable yet: {why}")
    work = tmp_path_factory.mktemp("lb")
    backends, procs = [], []
    try:
        for i in range(2):
            port = free_port()
            log = work / f"server{i}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--api-key", API_KEY, "--kv-cache-memory-gb", "0.25",
                 "--max-num-seqs", "8"],
                cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            procs.append(proc)
            backends.append((f"127.0.0.1:{port}", proc, log))
        for addr, proc, log in backends:
            wait_http_ok(f"http://{addr}/ready", proc, timeout=240, log=log)

        port = free_port()
        conf = render_nginx_conf(upstreams=[addr for addr, _, _ in backends],
                                 listen=f"127.0.0.1:{port}", workdir=work,
                                 extra_server_lines=["add_header X-Upstream $upstream_addr always;"])
        nginx_log = work / "nginx.out"
        proc = subprocess.Popen(nginx_cmd(nginx, conf, work, "-g", "daemon off;"),
                                stdout=nginx_log.open("wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, timeout=30, log=nginx_log)
        yield {"url": f"http://127.0.0.1:{port}", "backends": [a for a, _, _ in backends],
               "work": work}
    finally:
        for proc in reversed(procs):
            stop(proc, timeout=30)


def _client(url):
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"},
                        timeout=httpx.Timeout(120.0))


@pytest.mark.slow
def test_requests_spread_over_both_replicas(balanced):
    with _client(balanced["url"]) as client:
        model = client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        seen = Counter()
        for i in range(20):
            if i % 2:
                r = client.post("/v1/completions", json={
                    "model": model, "prompt": f"Count to {i}:", "max_tokens": 2,
                    "temperature": 0})
            else:
                r = client.get("/v1/models")
            assert r.status_code == 200, r.text
            seen[r.headers["X-Upstream"]] += 1
        # Without the key, nginx passes the server's 401 through.
        assert httpx.get(balanced["url"] + "/v1/models", timeout=30).status_code == 401
    assert set(seen) == set(balanced["backends"]), seen
    assert min(seen.values()) >= 5, f"requests not spread: {dict(seen)}"


def _stream(url):
    """Stream a chat completion; the arrival time of each SSE `data:` line and its payload."""
    with _client(url) as client:
        model = client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        body = {"model": model, "stream": True, "max_tokens": 48, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a long story about a cat."}]}
        start = time.monotonic()
        arrivals, chunks = [], []
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - start)
                    chunks.append(line[5:].strip())
    assert chunks[-1] == "[DONE]"
    return arrivals, chunks


def _incremental(arrivals) -> str | None:
    """None when the chunks arrived as the tokens were made, else why not. A buffering proxy
    hands the whole stream over at once at the end; unbuffered, the chunks are spread over the
    generation and the first comes long before the last."""
    first, last = arrivals[0], arrivals[-1]
    if last - first <= 0.2:
        return f"chunks arrived together: first {first:.3f}s, last {last:.3f}s"
    if first >= last * 0.75:
        return f"first chunk at {first:.3f}s of {last:.3f}s"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    if sum(1 for g in gaps if g > 0.005) < 5:
        return f"chunks came in bursts: {[round(g, 3) for g in gaps]}"
    return None


@pytest.mark.slow
def test_stream_passes_through_unbuffered(balanced):
    arrivals, chunks = _stream(balanced["url"])
    deltas = [json.loads(c)["choices"][0]["delta"].get("content") or ""
              for c in chunks[:-1] if json.loads(c).get("choices")]
    assert sum(1 for d in deltas if d) >= 10, f"too few content chunks: {deltas}"
    problem = _incremental(arrivals)
    assert problem is None, problem


@pytest.mark.slow
def test_stream_check_catches_a_buffering_proxy(balanced, nginx, tmp_path):
    """The control: the same backends behind an nginx that buffers (buffering forced on despite
    the server's X-Accel-Buffering: no, and gzip over the event stream) fail the check above."""
    port = free_port()
    conf = render_nginx_conf(upstreams=balanced["backends"], listen=f"127.0.0.1:{port}",
                             workdir=tmp_path)
    text = conf.read_text()
    for old, new in [("proxy_buffering off;",
                      "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;"),
                     ("gzip off;", "gzip on; gzip_types text/event-stream; gzip_min_length 1;")]:
        assert old in text
        text = text.replace(old, new)
    conf.write_text(text)
    log = tmp_path / "nginx.out"
    proc = subprocess.Popen(nginx_cmd(nginx, conf, tmp_path, "-g", "daemon off;"),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, timeout=30, log=log)
        arrivals, _ = _stream(f"http://127.0.0.1:{port}")
    finally:
        stop(proc, timeout=10)
    assert _incremental(arrivals) is not None, f"a buffering proxy went unnoticed: {arrivals}"


class _Always503(BaseHTTPRequestHandler):
    """A replica that is still loading its model: 503 to everything."""
    hits = 0

    def _answer(self):
        type(self).hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"error": {"message": "The model is still loading", "type": "unavailable"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_requests_go_around_a_loading_or_dead_replica(balanced, nginx, tmp_path):
    """One replica answers 503 (loading), one is down: POSTs still all succeed, on the third."""
    loading = ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    threading.Thread(target=loading.serve_forever, daemon=True).start()
    loading_addr = f"127.0.0.1:{loading.server_address[1]}"
    dead_addr = f"127.0.0.1:{free_port()}"
    live_addr = balanced["backends"][0]
    port = free_port()
    conf = render_nginx_conf(upstreams=[loading_addr, dead_addr, live_addr],
                             listen=f"127.0.0.1:{port}", workdir=tmp_path,
                             extra_server_lines=["add_header X-Upstream $upstream_addr always;"])
    log = tmp_path / "nginx.out"
    proc = subprocess.Popen(nginx_cmd(nginx, conf, tmp_path, "-g", "daemon off;"),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        with _client(url) as client:
            deadline = time.monotonic() + 30
            while True:  # nginx is up once it answers at all
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.2)
            paths = []
            for i in range(6):
                r = client.post("/v1/completions", json={
                    "model": "SmolLM2-135M-Instruct", "prompt": f"{i} + {i} =", "max_tokens": 1,
                    "temperature": 0})
                assert r.status_code == 200, (r.status_code, r.text, r.headers.get("X-Upstream"))
                paths.append(r.headers["X-Upstream"])
    finally:
        stop(proc, timeout=10)
        loading.shutdown()
    assert all(p.split(", ")[-1] == live_addr for p in paths), paths
    assert _Always503.hits >= 1, f"the loading replica was never tried: {paths}"
