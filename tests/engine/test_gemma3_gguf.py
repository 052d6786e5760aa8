"""Gemma 3 270M (Q4_K_M GGUF, a real file) against transformers' own GGUF loading of it."""
import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.real_models import gemma3_270m_path, transformers_greedy

pytest.importorskip("transformers")

PROMPT = "The capital of France is"


def test_gemma3_270m_greedy_matches_transformers():
    path = gemma3_270m_path()
    reference = transformers_greedy(path, PROMPT, 20)
    engine = LLMEngine(EngineConfig(model=path, max_model_len=512, kv_cache_memory_gb=0.1))
    assert engine.model_config.architecture == "gemma3"
    prompt_ids = engine.tokenizer.encode(PROMPT)
    assert prompt_ids == reference["prompt_ids"]  # the SentencePiece vocabulary read from the file
    out = engine.generate([prompt_ids], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0][0]
    assert out.token_ids == reference["token_ids"]
    assert "France" in out.text
