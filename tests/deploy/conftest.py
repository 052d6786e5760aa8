import os

import pytest

from tests.conftest import IMAGE_INSTALL_TEST


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes minutes (a fresh venv install, real processes); still in make test")


@pytest.fixture(scope="session", autouse=True)
def _image_install_starts_with_this_folder(request):
    """Under pytest-xdist the image install (tests/conftest.py) starts with the first test of this
    folder in the worker that runs it, so it overlaps the folder's other tests (its own test runs
    last); without xdist it started at collection already."""
    if "PYTEST_XDIST_WORKER" in os.environ and any(item.name == IMAGE_INSTALL_TEST for item in request.session.items):
        request.getfixturevalue("image_install")
