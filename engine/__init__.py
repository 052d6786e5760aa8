"""gptserve's engine: model code, paged KV cache, continuous batching, sampling.

The server imports only what this module exports.
"""
from engine.async_engine import AsyncEngine, EngineDeadError
from engine.config import EngineConfig
from engine.embedder import Embedder
from engine.llm_engine import LLMEngine
from engine.loader import default_model_path
from engine.models.config import ModelConfig
from engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

__all__ = [
    "AsyncEngine",
    "CompletionOutput",
    "Embedder",
    "EngineConfig",
    "EngineDeadError",
    "LLMEngine",
    "ModelConfig",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "Tokenizer",
    "default_model_path",
]
