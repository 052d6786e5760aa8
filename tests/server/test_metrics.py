"""/metrics: Prometheus text, behind the API key unless --metrics-public; errors counted."""
from __future__ import annotations

from tests.server.conftest import make_client
from tests.server.helpers import check_error

GOOD = {"Authorization": "Bearer key-two"}


def test_metrics_need_the_key_by_default(auth_client):
    check_error(auth_client.get("/metrics"), 401, code="invalid_api_key")
    r = auth_client.get("/metrics", headers=GOOD)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "gptserve:num_requests_running" in r.text and "gptserve:kv_cache_usage_perc" in r.text


def test_metrics_public_opens_only_metrics(fake_engine, monkeypatch):
    monkeypatch.delenv("GPTSERVE_API_KEY", raising=False)
    with make_client(fake_engine, api_key=["key-one"], metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
        check_error(client.get("/v1/models"), 401, code="invalid_api_key")
        check_error(client.post("/v1/completions", json={"prompt": "x"}), 401)


def test_requests_and_errors_are_counted(client):
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).status_code == 200
    check_error(client.post("/v1/completions", json={"prompt": "x", "n": 0}), 400)
    check_error(client.get("/v1/nope"), 404)
    text = client.get("/metrics").text
    assert 'gptserve:request_success_total{finish_reason="length"} 1.0' in text
    assert 'gptserve:request_errors_total{status="400",type="invalid_request_error"} 1.0' in text
    assert 'gptserve:request_errors_total{status="404",type="invalid_request_error"} 1.0' in text
    assert "gptserve:time_to_first_token_seconds_count 1.0" in text
    assert "gptserve:e2e_request_latency_seconds_count 1.0" in text
