"""Server unit tests: the real app over FakeEngine, through fastapi's TestClient."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.fake_engine import FakeEngine

SERVED_NAMES = ["SmolLM2-135M-Instruct", "davinci-codex", "gpt-4"]


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


def make_client(engine: FakeEngine, **settings) -> TestClient:
    settings.setdefault("served_model_name", SERVED_NAMES)
    app = create_app(Settings(_env_file=None, **settings), engine=engine)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(fake_engine, monkeypatch):
    for var in ("GPTSERVE_API_KEY", "GPTSERVE_SERVED_MODEL_NAME", "GPTSERVE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    with make_client(fake_engine) as c:
        yield c


@pytest.fixture
def auth_client(fake_engine, monkeypatch):
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    with make_client(fake_engine, api_key=["key-one", "key-two"]) as c:
        yield c
