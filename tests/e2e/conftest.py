"""End-to-end tests talk to the run's one live server on the built-in model (tests/conftest.py's
``live_server``), with an API key set through the environment; and openai 0.28 installed apart
for the legacy snippet."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live_server import API_KEY, SERVED_NAMES  # noqa: F401 - others import them here
from tests.server_process import REPO, free_port, running_server  # noqa: F401 - free_port: others import it here

OPENAI_028_DIR = Path(os.environ.get("GPTSERVE_OPENAI028_DIR", "/tmp/gptserve-openai028"))


@pytest.fixture(scope="session")
def server_url(live_server) -> str:
    return live_server.url


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


@pytest.fixture(scope="session")
def gemma3_client(tmp_path_factory):
    """One server on Gemma 3 270M (Q4_K_M GGUF, tests/real_models.py) with Gemma's chat template,
    for all its tests; an openai client for it."""
    from openai import OpenAI

    from tests.real_models import GEMMA3_CHAT_TEMPLATE_PATH, gemma3_270m_path

    folder = tmp_path_factory.mktemp("gemma3-server")
    args = ["--model", gemma3_270m_path(), "--served-model-name", "gemma-3-270m",
            "--chat-template", str(GEMMA3_CHAT_TEMPLATE_PATH),
            "--max-model-len", "1024", "--kv-cache-memory-gb", "0.2", "--max-num-seqs", "4"]
    with running_server(args, {}, log_path=folder / "server.log", poll=0.5) as (url, _, _):
        yield OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
