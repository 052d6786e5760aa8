"""Settings: flags over environment over defaults; comma-separated lists in the environment."""
from __future__ import annotations

from server.__main__ import serve_parser
from server.settings import Settings


def test_env_and_flags(monkeypatch):
    monkeypatch.setenv("GPTSERVE_API_KEY", "a, b")
    monkeypatch.setenv("GPTSERVE_PORT", "9000")
    monkeypatch.setenv("GPTSERVE_MAX_NUM_SEQS", "8")
    args = serve_parser().parse_args(["--port", "9001", "--api-key", "sekrit-c", "--api-key", "d",
                                      "--served-model-name", "x", "gpt-4"])
    settings = Settings(**vars(args))
    assert settings.port == 9001 and settings.max_num_seqs == 8
    assert settings.api_keys == ["sekrit-c", "d"] and settings.served_model_names == ["x", "gpt-4"]
    assert "sekrit" not in repr(settings)  # keys never printed
    monkeypatch.delenv("GPTSERVE_PORT")
    assert Settings().api_keys == ["a", "b"] and Settings().port == 8000


def test_default_names(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTSERVE_SERVED_MODEL_NAME", raising=False)
    assert Settings().served_model_names == ["SmolLM2-135M-Instruct"]
    (tmp_path / "tiny.Q8_0.gguf").write_bytes(b"")
    (tmp_path / "Qwen2.5-0.5B").mkdir()
    assert Settings(model=str(tmp_path / "tiny.Q8_0.gguf")).served_model_names == ["tiny.Q8_0"]
    assert Settings(model=str(tmp_path / "Qwen2.5-0.5B")).served_model_names == ["Qwen2.5-0.5B"]


def test_limit_flags(monkeypatch):
    monkeypatch.setenv("GPTSERVE_FAULT_INJECTION_STEP", "7")
    args = serve_parser().parse_args(["--metrics-public", "--max-queued-requests", "3", "--drain-timeout", "1.5"])
    settings = Settings(**vars(args))
    assert settings.metrics_public is True and settings.max_queued_requests == 3 and settings.drain_timeout == 1.5
    assert settings.fault_injection_step == 7
    assert Settings().metrics_public is False and Settings().max_queued_requests == 256
    assert "fault-injection" not in serve_parser().format_help()  # a test hook, not a feature
