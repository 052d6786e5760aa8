"""Settings: flags over environment over defaults; comma-separated lists in the environment."""
from __future__ import annotations

import pytest

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


def test_several_models(monkeypatch, tmp_path):
    for var in ("GPTSERVE_MODEL", "GPTSERVE_SERVED_MODEL_NAME", "GPTSERVE_EMBEDDING_MODEL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b-folder").mkdir()
    args = serve_parser().parse_args(["--model", str(tmp_path / "a.gguf"), "--model", f"bee={tmp_path / 'b-folder'}",
                                      "--model", str(tmp_path / "b-folder"),
                                      "--embedding-model", f"minilm={tmp_path / 'b-folder'}"])
    settings = Settings(**vars(args))
    assert [(s.names, s.path) for s in settings.model_specs] == [
        (["a"], str(tmp_path / "a.gguf")), (["bee"], str(tmp_path / "b-folder")), (["b-folder"], str(tmp_path / "b-folder"))]
    assert settings.served_model_names == ["a"]  # the default model's
    assert (settings.embedding_spec.names, settings.embedding_spec.path) == (["minilm"], str(tmp_path / "b-folder"))
    # --served-model-name names the first model; a path with "=" in its first part needs "./"
    settings = Settings(model=["./x=y.gguf", "other=/m/o.gguf"], served_model_name=["gpt-4", "x"])
    assert [(s.names, s.path) for s in settings.model_specs] == [(["gpt-4", "x"], "./x=y.gguf"), (["other"], "/m/o.gguf")]
    monkeypatch.setenv("GPTSERVE_MODEL", "one=/m/1.gguf,two=/m/2.gguf")  # comma-separated, like every list
    assert [s.names for s in Settings().model_specs] == [["one"], ["two"]]
    assert Settings(model="/m/1.gguf").model_specs[0].path == "/m/1.gguf"  # a plain string still works
    monkeypatch.setenv("GPTSERVE_MODEL", "")  # as compose files pass an unset variable
    monkeypatch.setenv("GPTSERVE_EMBEDDING_MODEL", "")
    assert Settings().served_model_names == ["SmolLM2-135M-Instruct"] and Settings().embedding_spec is None


def test_model_name_conflicts(monkeypatch, capsys):
    from pydantic import ValidationError

    from server.__main__ import serve

    monkeypatch.delenv("GPTSERVE_MODEL", raising=False)
    with pytest.raises(ValidationError, match="two models are named 'x'"):
        Settings(model=["x=/m/1.gguf", "x=/m/2.gguf"])
    with pytest.raises(ValidationError, match="two models are named 'e'"):
        Settings(model=["e=/m/1.gguf"], embedding_model="e=/m/minilm")
    with pytest.raises(ValidationError, match="both name the first model"):
        Settings(model=["x=/m/1.gguf"], served_model_name=["y"])
    with pytest.raises(ValidationError, match="needs a path"):
        Settings(model=["x="])
    assert serve(["--model", "x=/m/1.gguf", "--model", "x=/m/2.gguf"]) == 2  # a clear message, not a traceback
    assert "two models are named 'x'" in capsys.readouterr().err


def test_quantization_flag_reaches_the_engine_config(monkeypatch):
    from server import app as app_module

    seen = {}
    monkeypatch.setattr(app_module.AsyncEngine, "from_config", staticmethod(lambda config: seen.setdefault("c", config)))
    app_module.build_engine(Settings(**vars(serve_parser().parse_args(["--quantization", "int8"]))))
    assert seen["c"].quantization == "int8"
    seen.clear()
    app_module.build_engine(Settings())
    assert seen["c"].quantization is None  # exact weights unless asked
    seen.clear()
    app_module.build_engine(Settings(**vars(serve_parser().parse_args(["--quantization", "q4_0"]))))
    assert seen["c"].quantization == "q4_0"
    with pytest.raises(ValueError):
        Settings(quantization="int4")


def test_a_bad_quantization_flag_names_the_choices(capsys):
    from server.__main__ import serve

    assert serve(["--quantization", "q5_0"]) == 2
    err = capsys.readouterr().err
    assert "--quantization" in err and "'q8_0'" in err and "'q4_0'" in err
    assert "q8_0 / q4_0 = the linear layers quantized at load" in " ".join(serve_parser().format_help().split())


def test_kv_cache_dtype_flag_and_env_reach_the_engine_config(monkeypatch):
    from server import app as app_module

    seen = {}
    monkeypatch.setattr(app_module.AsyncEngine, "from_config", staticmethod(lambda config: seen.setdefault("c", config)))
    app_module.build_engine(Settings(**vars(serve_parser().parse_args(["--kv-cache-dtype", "float16"]))))
    assert seen["c"].kv_cache_dtype == "float16"
    seen.clear()
    monkeypatch.setenv("GPTSERVE_KV_CACHE_DTYPE", "float16")
    app_module.build_engine(Settings())
    assert seen["c"].kv_cache_dtype == "float16"
    monkeypatch.delenv("GPTSERVE_KV_CACHE_DTYPE")
    seen.clear()
    app_module.build_engine(Settings())
    assert seen["c"].kv_cache_dtype == "auto"  # the model's dtype unless asked
    with pytest.raises(ValueError):
        Settings(kv_cache_dtype="int4")
