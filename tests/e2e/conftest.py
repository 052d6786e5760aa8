"""One real gptserve process for all end-to-end tests (loading the model takes seconds), with an
API key set through the environment; and openai 0.28 installed apart for the legacy snippet."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "e2e-test-key"
SERVED_NAMES = ["SmolLM2-135M-Instruct", "davinci-codex", "gpt-4"]
OPENAI_028_DIR = Path(os.environ.get("GPTSERVE_OPENAI028_DIR", "/tmp/gptserve-openai028"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "GPTSERVE_API_KEY": f"other-key,{API_KEY}", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", *SERVED_NAMES, "--max-model-len", "2048", "--kv-cache-memory-gb", "0.5",
           "--max-num-seqs", "16"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gptserve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gptserve not ready in time:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert API_KEY not in log.read_text(), "the API key leaked into the log"


@pytest.fixture(scope="session")
def openai_client(server_url):
    from openai import OpenAI
    return OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server_url):
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def openai028_path() -> Path:
    """openai==0.28.1 in its own folder (it cannot share a venv with openai 1.x), reused across runs."""
    marker = OPENAI_028_DIR / ".complete"
    if not marker.exists():
        OPENAI_028_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                 "--target", str(OPENAI_028_DIR), "openai==0.28.1"],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"could not install openai==0.28.1:\n{result.stderr[-3000:]}")
        marker.touch()
    return OPENAI_028_DIR
