"""Reliability tests: real gptserve processes serving a tiny random model (fast on 2 cores)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port
from tests.tiny_models import write_tiny_hf_model

REPO = Path(__file__).resolve().parents[2]
API_KEY = "reliability-key"
# 2 layers × 2 KV heads × 16 dims × (K, V) × 4 bytes = 512 bytes a token; 16-token blocks
KV_BYTES_PER_BLOCK = 512 * 16


def kv_gb(num_blocks: int) -> str:
    return repr(num_blocks * KV_BYTES_PER_BLOCK / 2**30)


class ServerProcess:
    """`python -m server serve --model <tiny>` with extra flags; ``url``, ``proc``, ``log``."""

    def __init__(self, model_dir: str, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GPTSERVE_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "server", "serve", "--model", model_dir, "--host", "127.0.0.1",
               "--port", str(self.port), *flags]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    def wait_ready(self, timeout: float = 120) -> None:
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
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-llama")), arch="llama", seed=0)


@pytest.fixture
def start_server(tiny_model, tmp_path):
    """start_server(*flags) → a ready ServerProcess, killed at the end of the test if still running."""
    servers: list[ServerProcess] = []

    def start(*flags: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(tiny_model, tmp_path / f"server-{len(servers)}.log", *flags)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
