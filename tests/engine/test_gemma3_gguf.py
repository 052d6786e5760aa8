"""Gemma 3 270M (Q4_K_M GGUF, a real file) against transformers' own GGUF loading of it.

transformers dequantizes the file to float32, so its greedy tokens are compared with our float32
path. The default CPU path computes on the file's blocks with activations quantized per block, as
llama.cpp does: a slightly different function, checked to follow the same continuation at first
(measured: the first 11 of 20 tokens equal, then an equally plausible branch)."""
import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.real_models import gemma3_270m_path, transformers_greedy

pytest.importorskip("transformers")

PROMPT = "The capital of France is"


def _greedy(engine: LLMEngine, prompt_ids: list[int]):
    return engine.generate([prompt_ids], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0][0]


def test_gemma3_270m_greedy_matches_transformers():
    path = gemma3_270m_path()
    reference = transformers_greedy(path, PROMPT, 20)
    engine = LLMEngine(EngineConfig(model=path, max_model_len=512, kv_cache_memory_gb=0.1, dtype="float32"))
    assert engine.model_config.architecture == "gemma3"
    prompt_ids = engine.tokenizer.encode(PROMPT)
    assert prompt_ids == reference["prompt_ids"]  # the SentencePiece vocabulary read from the file
    out = _greedy(engine, prompt_ids)
    assert out.token_ids == reference["token_ids"]
    assert "France" in out.text


def test_gemma3_270m_default_path_keeps_the_blocks_and_the_continuation():
    path = gemma3_270m_path()
    reference = transformers_greedy(path, PROMPT, 20)
    engine = LLMEngine(EngineConfig(model=path, max_model_len=512, kv_cache_memory_gb=0.1))
    assert engine.loaded.keeps_file_quantization and "Q4_K x" in engine.loaded.weight_formats
    out = _greedy(engine, engine.tokenizer.encode(PROMPT))
    assert out.token_ids[:8] == reference["token_ids"][:8]
    assert "France" in out.text
