"""The one real `gptserve serve` process on the built-in model that every test driving it from
outside shares (end-to-end tests, the chat page in Chromium, the client examples): started once
per pytest run by the session fixture ``live_server`` in tests/conftest.py, since loading the
model is the expensive part. Tests must leave it as they found it (no request left running)."""
from __future__ import annotations

from pathlib import Path

import httpx

from tests.server_process import REPO, stop_server

__all__ = ["API_KEY", "ARGS", "ENV", "LiveServer", "OTHER_KEY", "REPO", "SERVED_NAMES"]

API_KEY = "e2e-test-key"
OTHER_KEY = "other-key"  # a second configured key: what one key stores, the other must not see
# every name resolves to the built-in model (the picker, the legacy `engine=` snippets)
SERVED_NAMES = ["SmolLM2-135M-Instruct", "davinci-codex", "gpt-4"]
ARGS = ["--served-model-name", *SERVED_NAMES, "--max-model-len", "2048", "--kv-cache-memory-gb", "0.5",
        "--max-num-seqs", "16"]
ENV = {"GPTSERVE_API_KEY": f"{OTHER_KEY},{API_KEY}"}


class LiveServer:
    """``url``, ``api_key``, ``proc``, ``log``; ``metrics()`` reads /metrics as {sample: value}."""

    def __init__(self, url: str, proc, api_key: str, log: Path) -> None:
        self.url, self.proc, self.api_key, self.log = url, proc, api_key, log

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
