"""A real `gptserve serve` process on the built-in model, for tests that drive it from outside
(the browser test, the client examples). Started once per module; killed at the end."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


class LiveServer:
    """``url``, ``api_key``, ``log``; ``metrics()`` reads /metrics as {sample name: value}."""

    def __init__(self, log: Path, api_key: str, served_names: list[str], *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = log
        env = {**os.environ, "GPTSERVE_API_KEY": api_key, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", *served_names, "--max-model-len", "2048",
               "--kv-cache-memory-gb", "0.25", "--max-num-seqs", "8", *flags]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"gptserve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gptserve not ready in time:\n{self.log_text()}")
            time.sleep(0.3)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.api_key}"},
                         timeout=10).raise_for_status().text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_live_server(log: Path, api_key: str, served_names: list[str], *flags: str) -> LiveServer:
    server = LiveServer(log, api_key, served_names, *flags)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
