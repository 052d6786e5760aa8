"""Fixtures shared across the test packages."""
from __future__ import annotations

import pytest

from tests.live_server import API_KEY, ARGS, ENV, LiveServer
from tests.server_process import running_server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> LiveServer:
    """One gptserve process on the built-in model for the whole run (tests/live_server.py)."""
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    with running_server(ARGS, ENV, log_path=log, poll=0.5) as (url, proc, _):
        yield LiveServer(url, proc, API_KEY, log)
    assert API_KEY not in log.read_text(), "the API key leaked into the log"
