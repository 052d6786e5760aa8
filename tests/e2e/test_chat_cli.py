"""`gptserve chat` says why it cannot start: a refused key is not "cannot reach"."""
from __future__ import annotations

from clients.chat import main
from tests.e2e.conftest import free_port


def test_a_wrong_key_is_reported_as_refused(server_url, capsys):
    assert main(["--url", f"{server_url}/v1", "--api-key", "not-the-key"]) == 1
    err = capsys.readouterr().err
    assert "refused the API key" in err and "cannot reach" not in err


def test_no_server_is_reported_as_unreachable(capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["--url", url, "--api-key", "k"]) == 1
    assert f"cannot reach {url}" in capsys.readouterr().err
