"""A real `gptserve serve` process on the built-in model (tests/server_process.py starts it), for
the tests that drive it from outside: the browser test and the client examples."""
from __future__ import annotations

from pathlib import Path

import httpx

from tests.server_process import REPO, start_server, stop_server

__all__ = ["REPO", "LiveServer", "start_live_server"]


class LiveServer:
    """``url``, ``api_key``, ``proc``; ``metrics()`` reads /metrics as {sample: value}."""

    def __init__(self, url: str, proc, api_key: str) -> None:
        self.url, self.proc, self.api_key = url, proc, api_key

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.api_key}"},
                         timeout=10).raise_for_status().text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self) -> None:
        stop_server(self.proc)


def start_live_server(log: Path, api_key: str, served_names: list[str], *flags: str) -> LiveServer:
    """Ready to serve ``served_names`` (all the built-in model), the key set through the environment."""
    args = ["--served-model-name", *served_names, "--max-model-len", "2048", "--kv-cache-memory-gb", "0.25",
            "--max-num-seqs", "8", *flags]
    url, proc, _ = start_server(args, {"GPTSERVE_API_KEY": api_key}, log_path=log)
    return LiveServer(url, proc, api_key)
