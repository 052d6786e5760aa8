"""Reliability tests: real gptserve processes serving a tiny random model (fast on 2 cores)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.server_process import launch_server, log_tail, stop_server, wait_ready
from tests.tiny_models import write_tiny_hf_model

API_KEY = "reliability-key"
# 2 layers × 2 KV heads × 16 dims × (K, V) × 4 bytes = 512 bytes a token; 16-token blocks
KV_BYTES_PER_BLOCK = 512 * 16


def kv_gb(num_blocks: int) -> str:
    return repr(num_blocks * KV_BYTES_PER_BLOCK / 2**30)


class ServerProcess:
    """`python -m server serve --model <tiny>` with extra flags; ``url``, ``port``, ``proc``, ``log``."""

    def __init__(self, model_dir: str, log: Path, *flags: str) -> None:
        self.log = log
        env = {"GPTSERVE_API_KEY": API_KEY}
        if "--kv-cache-memory-gb" not in flags:  # the default pool (GBs) takes the tiny model seconds to zero
            flags = ("--kv-cache-memory-gb", "0.05", *flags)
        self.url, self.proc = launch_server(["--model", model_dir, *flags], env, log)
        self.port = urlparse(self.url).port
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    def wait_ready(self, timeout: float = 120) -> None:
        wait_ready(self.url, self.proc, self.log, timeout=timeout)

    def log_text(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        stop_server(self.proc, timeout=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    # 4096 positions: long enough for streams that are still running when a test acts on them
    return write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-llama")), arch="llama", seed=0,
                               max_position_embeddings=4096)


# the denial-of-service tests (test_dos_*.py) share one server with small limits
DOS_MAX_NUM_SEQS = 8
DOS_MAX_IN_FLIGHT = DOS_MAX_NUM_SEQS + 8  # --max-queued-requests 8
DOS_MAX_LOGPROBS = 10_000
DOS_BODY_TIMEOUT = 2.0
DOS_HEADER_TIMEOUT = 2.0
DOS_MAX_HEADER_BYTES = 16384  # the default
DOS_MAX_CONNECTIONS = 48


@pytest.fixture(scope="session")
def dos_server(tiny_model, tmp_path_factory):
    server = ServerProcess(tiny_model, tmp_path_factory.mktemp("dos") / "server.log",
                           "--max-model-len", "512", "--max-num-seqs", str(DOS_MAX_NUM_SEQS),
                           "--max-queued-requests", "8", "--max-logprobs-per-request", str(DOS_MAX_LOGPROBS),
                           "--body-timeout", str(DOS_BODY_TIMEOUT), "--header-timeout", str(DOS_HEADER_TIMEOUT),
                           "--max-connections", str(DOS_MAX_CONNECTIONS))
    server.wait_ready()
    yield server
    server.stop()


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
