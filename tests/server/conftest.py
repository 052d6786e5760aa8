"""Server unit tests: the real app over FakeEngine, through fastapi's TestClient."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _install_engine_shim() -> None:
    """Until every engine module exists, expose just its dataclasses as `engine` (the server
    imports only names from engine/__init__.py, so this is all it needs)."""
    try:
        import engine  # noqa: F401
        return
    except ImportError:
        for name in [n for n in sys.modules if n == "engine" or n.startswith("engine.")]:
            del sys.modules[name]
    root = Path(__file__).resolve().parents[2] / "engine"
    shim = types.ModuleType("engine")
    shim.__path__ = []
    sys.modules["engine"] = shim
    for mod in ("outputs", "sampling_params", "config"):
        spec = importlib.util.spec_from_file_location(f"engine.{mod}", root / f"{mod}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"engine.{mod}"] = module
        spec.loader.exec_module(module)
        for key, value in vars(module).items():
            if not key.startswith("_"):
                setattr(shim, key, value)

    class EngineDeadError(RuntimeError):
        pass

    shim.EngineDeadError = EngineDeadError
    shim.AsyncEngine = object


_install_engine_shim()

from fastapi.testclient import TestClient  # noqa: E402

from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.server.fake_engine import FakeEngine  # noqa: E402

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
