"""Replays cheap denial-of-service requests against a running gptserve on loopback, and prints
a table: what the server answered, how long it took, how slow /health got meanwhile, and the
server's memory (VmRSS / VmHWM of /proc/PID/status) after each.

    python -m server serve --api-key KEY &
    python scripts/attack.py --url http://127.0.0.1:8000 --api-key KEY --pid $!

Bounded: every flood stops at a fixed number of bytes or connections, every wait has a timeout,
and only loopback addresses are accepted. Not in CI (tests/reliability/test_dos_connections.py
and test_dos_requests.py check the same limits on a tiny model).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import select
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx


def memory_mib(pid: int | None) -> str:
    if pid is None:
        return "-"
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return f"{int(fields['VmRSS'].split()[0]) // 1024} / {int(fields['VmHWM'].split()[0]) // 1024}"


class HealthProbe:
    """GET /health every 50 ms on a thread; ``worst`` is the slowest answer (or failure) seen."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.failures = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    self.failures += client.get(f"{self.url}/health").status_code != 200
                except httpx.HTTPError:
                    self.failures += 1
                self.worst = max(self.worst, time.perf_counter() - start)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def status_of(answer: bytes) -> str:
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else (answer.decode() or "closed")


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data or b"reset"
    except socket.timeout:
        return data or b"open"
    return data


def flood(host: str, port: int, head: bytes, filler: bytes, max_bytes: int) -> tuple[str, int]:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        num_sent = len(head)
        try:
            while num_sent < max_bytes and not select.select([sock], [], [], 0)[0]:
                sock.sendall(filler)
                num_sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return status_of(read_all(sock, 30)), num_sent


class Attack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url.rstrip("/")
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.key = args.api_key
        self.headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.pid = args.pid
        self.args = args
        self.rows: list[tuple[str, str, str, str, str]] = []

    def row(self, name: str, statuses, seconds: float, probe: HealthProbe) -> None:
        counts = statuses if isinstance(statuses, str) else ", ".join(f"{s}×{n}" for s, n in Counter(statuses).items())
        health = f"{probe.worst:.2f}" + (f" ({probe.failures} failed)" if probe.failures else "")
        self.rows.append((name, counts, f"{seconds:.1f}", health, memory_mib(self.pid)))
        print(f"  {name}: {counts} in {seconds:.1f} s, /health worst {health} s", file=sys.stderr, flush=True)

    def timed(self, name: str, fn) -> None:
        with HealthProbe(self.url) as probe:
            start = time.perf_counter()
            statuses = fn()
            self.row(name, statuses, time.perf_counter() - start, probe)

    def in_threads(self, count: int, fn) -> list:
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def post(self, path: str, body: dict, timeout: float = 300) -> str:
        r = httpx.post(f"{self.url}{path}", headers=self.headers, json=body, timeout=timeout)
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
        return f"{r.status_code}" + (f" {code}" if code else "")

    # ----- the attacks -----

    def url_flood(self) -> list:
        return [s for s, _ in self.in_threads(8, lambda: flood(self.host, self.port, b"GET /", b"a" * 65536, 32 << 20))]

    def header_flood(self) -> list:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: "
        return [s for s, _ in self.in_threads(8, lambda: flood(self.host, self.port, head, b"a" * 65536, 32 << 20))]

    def idle_heads(self) -> list:
        socks = [socket.create_connection((self.host, self.port), timeout=30) for _ in range(self.args.connections)]
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answers = [status_of(read_all(sock, 40)) for sock in socks]
        for sock in socks:
            sock.close()
        return answers

    def big_output(self) -> list:
        body = {"prompt": [[28] * 8000], "n": 128, "echo": True, "logprobs": 5, "max_tokens": 0}
        within_n = {**body, "n": 64}
        return [self.post("/v1/completions", body), self.post("/v1/completions", within_n)]

    def fan_out(self) -> list:
        async def main():
            async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=300) as client:
                msgs = [{"role": "user", "content": "Tell me a story."}]
                too_many = await client.post("/v1/chat/completions", json={"messages": msgs, "n": 128, "max_tokens": 48})
                big = asyncio.create_task(client.post("/v1/chat/completions", json={
                    "messages": msgs, "n": 64, "max_tokens": 48, "ignore_eos": True}))
                await asyncio.sleep(1.0)
                start = time.perf_counter()
                short = await client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 4})
                latency = time.perf_counter() - start
                big = await big
                return [f"n=128: {too_many.status_code}", f"n=64: {big.status_code}",
                        f"a 4-token request meanwhile: {short.status_code} in {latency:.1f} s"]
        return asyncio.run(main())

    def slow_bodies(self) -> list:
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
        socks = []
        for _ in range(self.args.connections):
            sock = socket.create_connection((self.host, self.port), timeout=30)
            sock.sendall(head + b'{"pro')
            socks.append(sock)
        other = self.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2}, timeout=60)
        answers = [status_of(read_all(sock, self.args.body_timeout + 10)) for sock in socks]
        for sock in socks:
            sock.close()
        return [f"another request: {other}", *answers]

    def tokenize(self) -> list:
        text = "hello world, what a day " * (self.args.tokenize_mb * 43_690)

        async def main():
            async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=600) as client:
                return await asyncio.gather(*(client.post("/tokenize", json={"prompt": text}) for _ in range(6)),
                                            client.post("/v1/chat/completions", json={
                                                "messages": [{"role": "user", "content": text}], "max_tokens": 1}))
        return [r.status_code for r in asyncio.run(main())]

    def grammars(self) -> list:
        out = []
        for k in range(4):
            # 1024 choices (the most a request may list) of grammar_kb bytes each
            choices = [f"{k}-{i:04d}-" + "x" * max(1, self.args.grammar_kb - 8) for i in range(1024)]
            out.append(self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "pick"}],
                                                          "guided_choice": choices, "max_tokens": 4}))
        return out

    def run(self) -> None:
        self.rows.append(("baseline", "-", "-", "-", memory_mib(self.pid)))
        for name, fn in [("endless URL ×8", self.url_flood), ("endless header ×8", self.header_flood),
                         (f"unfinished heads ×{self.args.connections}", self.idle_heads),
                         ("n=128 echo logprobs (and n=64)", self.big_output), ("chat fan-out", self.fan_out),
                         (f"slow bodies ×{self.args.connections}", self.slow_bodies),
                         (f"6 × {self.args.tokenize_mb} MB /tokenize + chat", self.tokenize),
                         (f"4 distinct guided_choice lists of 1024 × {self.args.grammar_kb} B", self.grammars)]:
            self.timed(name, fn)

    def table(self) -> str:
        head = ("attack", "server's answers", "seconds", "/health worst (s)", "RSS / peak MiB")
        lines = [f"| {' | '.join(head)} |", f"|{'---|' * len(head)}"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, for its memory")
    parser.add_argument("--connections", type=int, default=320, help="sockets for the idle-head and slow-body attacks")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="the server's --body-timeout")
    parser.add_argument("--tokenize-mb", type=int, default=1, help="size of each /tokenize text")
    parser.add_argument("--grammar-kb", type=int, default=1024, help="bytes of each of a guided_choice list's 1024 choices")
    args = parser.parse_args(argv)
    host = urlparse(args.url).hostname or ""
    try:
        is_loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        is_loopback = False
    if not is_loopback:
        print(f"attack.py: {host} is not a loopback address; refusing", file=sys.stderr)
        return 2
    attack = Attack(args)
    attack.run()
    print(attack.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
