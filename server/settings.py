"""Settings: the one place that reads the environment (GPTSERVE_*) and the CLI's flags.

Precedence: command-line flag > environment variable > default. List settings accept a
comma-separated string in the environment (``GPTSERVE_API_KEY=key1,key2``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass
class ModelSpec:
    """One ``--model`` value: ``PATH`` or ``NAME=PATH``. ``path`` None is the built-in model."""

    names: list[str]
    path: str | None
    is_named: bool = False


def parse_model_spec(value: str) -> ModelSpec:
    """``NAME=PATH`` when the text before the first "=" is non-empty and has no "/"; else all of
    it is a path (so ``./a=b.gguf`` is the file ``a=b.gguf``)."""
    name, sep, path = value.partition("=")
    if sep and name.strip() and "/" not in name and os.sep not in name:
        if not path:
            raise ValueError(f"{value!r}: NAME=PATH needs a path after '='")
        return ModelSpec([name.strip()], path, is_named=True)
    return ModelSpec([], value)


def default_model_name(path: str | None) -> str:
    if path is None:
        return DEFAULT_MODEL_NAME
    path_ = Path(path.rstrip("/"))
    # a folder like "Qwen2.5-0.5B" keeps its whole name; a file loses its extension
    return path_.stem if path_.is_file() else path_.name


class Settings(BaseSettings):
    """Everything `gptserve serve` can be told. Each field is flag ``--x-y`` and env ``GPTSERVE_X_Y``."""

    model_config = SettingsConfigDict(env_prefix="GPTSERVE_", extra="ignore")

    # what to serve
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="PATH or NAME=PATH: a .gguf file or a Hugging Face folder; repeat to serve several models "
                    "(default: built-in SmolLM2-135M-Instruct)")
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="names the first model answers to; the first is listed first (default: the file or folder name)")
    embedding_model: str | None = Field(
        None, description="PATH or NAME=PATH: a BERT sentence-embedding folder served at /v1/embeddings")
    chat_template: str | None = Field(None, description="a Jinja2 chat template file that replaces the model's own")
    reasoning_parser: Literal["auto", "none", "deepseek_r1", "qwen3"] = Field(
        "auto", description="how a reasoning model's <think>…</think> is split off into reasoning_content: "
        "auto = when the chat template writes <think> and </think>; none = thinking stays in content")
    special_tokens_in_messages: bool = Field(
        False, description="text in chat messages may write special tokens (<|im_start|> …) that act as the template's "
                           "own, so a client can forge a system turn (the old behaviour; default: read as plain text)")
    # engine
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = on CPU the weights' own formats (a GGUF file's Q4_0/Q4_1/Q8_0/F16/BF16, a Hugging "
        "Face folder's bfloat16/float16 computed as stored; other formats float32), bfloat16 on CUDA; "
        "float32 = dequantize everything (the reference)")
    quantization: Literal["none", "int8", "q8_0", "q4_0"] = Field(
        "none", description="none = the weights as loaded (exact); int8 = int8 linear layers on the CPU, "
        "2-3x the throughput for a measured cost in quality (see BENCHMARKS.md); q8_0 / q4_0 = the linear "
        "layers quantized at load into that GGUF block format, as llama-quantize would (CPU; the output layer Q8_0)")
    max_model_len: int | None = Field(None, ge=1, description="context length in tokens (default: the model's)")
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together at most")
    max_num_batched_tokens: int = Field(1024, ge=1, description="tokens per engine step (prefill chunks + decodes)")
    max_decode_slowdown: float = Field(
        2.0, ge=0, description="while streams decode, a long prompt prefills in chunks sized so a step takes at most "
        "this many times a decode-only step (measured as it runs), so streams keep flowing; 0 = off (whole budget)")
    kv_cache_memory_gb: float = Field(2.0, gt=0, description="memory for the paged KV cache")
    kv_cache_dtype: Literal["auto", "float16"] = Field(
        "auto", description="auto = the model's dtype; float16 = half the KV memory and reads (llama.cpp's default; "
        "a small measured cost in quality, see BENCHMARKS.md)")
    no_prefix_caching: bool = Field(False, description="turn the prefix cache off: every prompt is computed in full (for A/B benchmarks)")
    # HTTP
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys (repeat the flag; comma-separated in the env); none = open")
    share_prefix_cache: bool = Field(
        False, description="one prefix cache for all API keys (default: one per key, so cached_tokens cannot "
                           "tell a client what another key's clients sent)")
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_header_bytes: int = Field(16384, ge=1024, description="the request line and headers together; past it 414 "
                                  "(a long URL) or 431, and the connection is closed")
    header_timeout: float = Field(10.0, gt=0, description="seconds a request's headers may take to arrive; past it 408 "
                                  "and the connection is closed")
    keep_alive_timeout: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open")
    max_connections: int | None = Field(
        None, ge=1, description="open connections at most; one more gets 503 and is closed at once "
        "(default: --max-num-seqs + --max-queued-requests + 128)")
    body_timeout: float = Field(30.0, gt=0, description="seconds a request body may take to arrive; past it 408 and the "
                                "connection is closed (the request holds no admission slot meanwhile)")
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; empty = CORS off")
    # limits and failure behaviour
    max_queued_requests: int = Field(
        256, ge=0, description="requests held beyond --max-num-seqs; past running + queued, 429 with Retry-After")
    max_queued_tokens: int | None = Field(
        None, ge=1, description="prompt tokens held waiting for prefill; past it, 429 with Retry-After (default: no cap)")
    request_timeout: float | None = Field(
        None, gt=0, description="seconds a generation request may take, queue included; past it 408 (default: none)")
    max_sequences_per_request: int | None = Field(
        None, ge=1, description="prompts × n (or best_of) one request may ask for; more is a 400 "
        "(default and ceiling: --max-num-seqs, what the scheduler runs at once)")
    max_logprobs_per_request: int = Field(
        500_000, ge=1, description="logprob entries one response may hold (tokens × (logprobs + 1) over every choice, "
        "echoed prompt included); more is a 400")
    grammar_cache_mb: float = Field(
        256.0, gt=0, description="memory for compiled structured-output grammars (estimated); least recently used go first")
    drain_timeout: float = Field(30.0, ge=0, description="on SIGTERM: seconds to let in-flight requests finish before exiting")
    metrics_public: bool = Field(False, description="serve /metrics without an API key (for scrapers that cannot send one)")
    response_store_max_responses: int = Field(
        1000, ge=0, description="stored /v1/responses kept per API key, in memory (oldest dropped first; 0 = none)")
    response_store_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="bytes of stored /v1/responses kept per API key (oldest dropped first)")
    fault_injection_step: int | None = Field(
        None, ge=0, description="tests only: the engine's forward pass at this step raises", json_schema_extra={"hidden": True})
    fault_injection_load_seconds: float | None = Field(
        None, ge=0, description="tests only: loading each model first waits this long", json_schema_extra={"hidden": True})
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field("info", description="log verbosity")

    @field_validator("model", "served_model_name", "api_key", "cors_allowed_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("model", mode="before")
    @classmethod
    def _none_is_default(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator("embedding_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # GPTSERVE_EMBEDDING_MODEL=

    @field_validator("max_decode_slowdown")
    @classmethod
    def _above_one(cls, value: float) -> float:
        if value != 0 and value <= 1:
            raise ValueError("must be above 1 (a step may take that many decode steps' time), or 0 to turn pacing off")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def api_keys(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_key]

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        specs = [*self.model_specs, *([self.embedding_spec] if self.embedding_spec else [])]
        seen: dict[str, str] = {}
        for spec in specs:
            for name in spec.names:
                if name in seen:
                    raise ValueError(f"two models are named {name!r} ({seen[name]} and {spec.path}); "
                                     f"name them with NAME=PATH")
                seen[name] = spec.path or "the built-in model"
        return self

    @property
    def model_specs(self) -> list[ModelSpec]:
        """The generation models, in order; the first is the default (a request without ``model``)."""
        specs = [parse_model_spec(value) for value in self.model] or [ModelSpec([], None)]
        first = specs[0]
        if self.served_model_name:
            if first.is_named:
                raise ValueError(f"--served-model-name and a NAME= in --model {self.model[0]} both name the first model; "
                                 f"use one of them")
            first.names = list(dict.fromkeys(self.served_model_name))  # de-duplicated, order kept
        for spec in specs:
            spec.names = spec.names or [default_model_name(spec.path)]
        return specs

    @property
    def embedding_spec(self) -> ModelSpec | None:
        if self.embedding_model is None:
            return None
        spec = parse_model_spec(self.embedding_model)
        spec.names = spec.names or [default_model_name(spec.path)]
        return spec

    @property
    def served_model_names(self) -> list[str]:
        """The names the first (default) model answers to; the first is the canonical one."""
        return self.model_specs[0].names

    def read_chat_template(self) -> str | None:
        return Path(self.chat_template).read_text(encoding="utf-8") if self.chat_template else None
