"""Fixtures shared across the test packages."""
from __future__ import annotations

import importlib.util
import os
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
# `make test` runs pytest-xdist workers (Makefile's TEST_WORKERS); these folders' tests share servers (session and
# module fixtures), so each folder runs whole in one worker and each server configuration still
# starts once per run. clients/, e2e/ and ui/ all drive the built-in model's live server.
_SHARED = {"clients": "live server", "e2e": "live server", "ui": "live server",
           "reliability": "reliability", "deploy": "deploy"}


def xdist_scope(nodeid: str) -> str:
    """The unit of work one xdist worker takes whole: a folder above, else a file (engine,
    server: in-process tests, the finest split that keeps a module's fixtures together)."""
    path = nodeid.split("::")[0]
    parts = path.split("/")
    return _SHARED.get(parts[1], path) if len(parts) > 2 else path


if importlib.util.find_spec("xdist") is not None:
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class GroupScheduling(LoadScopeScheduling):
            """xdist's scope scheduling (a scope runs whole in one worker; free workers take
            the next) with our groups as the scopes."""

            def _split_scope(self, nodeid: str) -> str:
                return xdist_scope(nodeid)

        # in collection order (clients/ on the live server, then deploy/ with the image install:
        # the two longest groups start first), not xdist's default of the most tests first,
        # which left the image install's minute and more for the end of the run
        config.option.loadscopereorder = False
        return GroupScheduling(config, log)


def pytest_collection_modifyitems(session, config, items):
    """The image-install test's pip steps (a minute, mostly unpacking torch) start in the
    background as soon as the test is collected, and the test itself runs last: the install
    overlaps the rest of the suite instead of adding to it. Under pytest-xdist each worker
    collects everything, so there the install starts when the test's worker first asks for it
    (the other workers go on meanwhile)."""
    global _image_install
    slow = [item for item in items if item.name == IMAGE_INSTALL_TEST]
    if not slow:
        return
    items[:] = [item for item in items if item.name != IMAGE_INSTALL_TEST] + slow
    if "PYTEST_XDIST_WORKER" not in os.environ:
        _image_install = _start_image_install()


def _start_image_install():
    from tests.deploy.test_image_install import ImageInstall

    return ImageInstall(Path(tempfile.mkdtemp(prefix="gptserve-image-install-"))).start()


@pytest.fixture(scope="session")
def image_install():
    global _image_install
    if _image_install is None:
        _image_install = _start_image_install()
    return _image_install
