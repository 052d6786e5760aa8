"""Fixtures shared across the test packages."""
from __future__ import annotations

import tempfile
from pathlib import Path

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


IMAGE_INSTALL_TEST = "test_image_install_and_start_in_a_fresh_venv"
_image_install = None


def pytest_collection_modifyitems(session, config, items):
    """The image-install test's pip steps (a minute, mostly unpacking torch) start in the
    background as soon as the test is collected, and the test itself runs last: the install
    overlaps the rest of the suite instead of adding to it."""
    global _image_install
    slow = [item for item in items if item.name == IMAGE_INSTALL_TEST]
    if not slow:
        return
    items[:] = [item for item in items if item.name != IMAGE_INSTALL_TEST] + slow
    from tests.deploy.test_image_install import ImageInstall

    _image_install = ImageInstall(Path(tempfile.mkdtemp(prefix="gptserve-image-install-"))).start()


@pytest.fixture(scope="session")
def image_install():
    if _image_install is None:
        pytest.skip("the image install was not started (the test was not collected)")
    return _image_install
