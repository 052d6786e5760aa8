"""API keys: deny by default on the resolved route; /health, /ready and the chat page are open."""
from __future__ import annotations

import pytest

from server.auth import APIKeyChecker
from tests.server.helpers import check_error
from tests.spec_validator import validate

GOOD = {"Authorization": "Bearer key-two"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"},
                                     {"Authorization": "Basic key-one"}, {"Authorization": "Bearer "}])
def test_rejected(auth_client, headers):
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                         ("GET", "/v1/models/gpt-4"), ("POST", "/v1/engines/gpt-4/completions"),
                         ("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/v1/nope")]:
        r = auth_client.request(method, path, headers=headers, json={})
        check_error(r, 401, code="invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"


def test_accepted_with_any_key(auth_client):
    for key in ("key-one", "key-two"):
        r = auth_client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        validate(r.json(), "ListModelsResponse")
    r = auth_client.post("/v1/completions", headers={"authorization": "bearer key-one"},
                         json={"model": "gpt-4", "prompt": "x", "max_tokens": 2})
    validate(r.json(), "CreateCompletionResponse")


@pytest.mark.parametrize("path", ["//v1/models", "/v1//models", "/v1/models/", "/v1/%6Dodels", "/v1/models/../models",
                                  "/./v1/models", "/V1/models", "/v1/models%2F", "/health/../v1/models",
                                  "/health%2F..%2Fv1%2Fmodels"])
def test_path_tricks_never_reach_the_api_without_a_key(auth_client, path):
    r = auth_client.get(path)
    assert r.status_code in (401, 404), (path, r.status_code, r.text)
    assert "data" not in r.json()


def test_public_routes(auth_client):
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/ready").status_code == 200


def test_checker_compares_every_key():
    checker = APIKeyChecker(["a", "b"])
    assert checker.is_valid(b"Bearer b") and checker.is_valid(b"Bearer a")
    assert not checker.is_valid(b"Bearer c") and not checker.is_valid(None) and not checker.is_valid(b"Bearer")
    assert not APIKeyChecker([]).is_enabled


def test_more_than_one_authorization_header_is_refused(auth_client):
    for values in (["Bearer wrong", "Bearer key-one"], ["Bearer key-one", "Bearer key-one"]):
        r = auth_client.get("/v1/models", headers=[("Authorization", v) for v in values])
        check_error(r, 400, code="invalid_authorization_header")
    assert auth_client.get("/v1/models", headers={"Authorization": "Bearer key-one"}).status_code == 200


def _cache_salts(client, fake_engine, keys: list[str]) -> list:
    salts = []
    for key in keys:
        fake_engine.requests.clear()
        r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"messages": [{"role": "user", "content": "a secret system prompt"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        [(_, params)] = fake_engine.requests.values()
        salts.append(params.cache_salt)
    return salts


def test_each_api_key_has_its_own_prefix_cache(auth_client, fake_engine):
    one, two, one_again = _cache_salts(auth_client, fake_engine, ["key-one", "key-two", "key-one"])
    assert one and two and one != two and one == one_again
    assert "key-one" not in one  # a digest, not the key


def test_share_prefix_cache_setting(fake_engine, monkeypatch):
    from tests.server.conftest import make_client

    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    with make_client(fake_engine, api_key=["key-one", "key-two"], share_prefix_cache=True) as client:
        assert _cache_salts(client, fake_engine, ["key-one", "key-two"]) == [None, None]
