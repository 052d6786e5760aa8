"""Settings: the one place that reads the environment (GPTSERVE_*) and the CLI's flags.

Precedence: command-line flag > environment variable > default. List settings accept a
comma-separated string in the environment (``GPTSERVE_API_KEY=key1,key2``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything `gptserve serve` can be told. Each field is flag ``--x-y`` and env ``GPTSERVE_X_Y``."""

    model_config = SettingsConfigDict(env_prefix="GPTSERVE_", extra="ignore")

    # what to serve
    model: str | None = Field(None, description="a .gguf file or a Hugging Face folder; default: built-in SmolLM2-135M-Instruct")
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="names the model answers to; the first is listed first (default: the file or folder name)")
    chat_template: str | None = Field(None, description="a Jinja2 chat template file that replaces the model's own")
    # engine
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto = float32 on CPU, bfloat16 on CUDA")
    max_model_len: int | None = Field(None, ge=1, description="context length in tokens (default: the model's)")
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together at most")
    max_num_batched_tokens: int = Field(1024, ge=1, description="tokens per engine step (prefill chunks + decodes)")
    kv_cache_memory_gb: float = Field(2.0, gt=0, description="memory for the paged KV cache")
    # HTTP
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys (repeat the flag; comma-separated in the env); none = open")
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; empty = CORS off")
    # limits and failure behaviour
    max_queued_requests: int = Field(
        256, ge=0, description="requests held beyond --max-num-seqs; past running + queued, 429 with Retry-After")
    max_queued_tokens: int | None = Field(
        None, ge=1, description="prompt tokens held waiting for prefill; past it, 429 with Retry-After (default: no cap)")
    request_timeout: float | None = Field(
        None, gt=0, description="seconds a generation request may take, queue included; past it 408 (default: none)")
    drain_timeout: float = Field(30.0, ge=0, description="on SIGTERM: seconds to let in-flight requests finish before exiting")
    metrics_public: bool = Field(False, description="serve /metrics without an API key (for scrapers that cannot send one)")
    fault_injection_step: int | None = Field(
        None, ge=0, description="tests only: the engine's forward pass at this step raises", json_schema_extra={"hidden": True})
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field("info", description="log verbosity")

    @field_validator("served_model_name", "api_key", "cors_allowed_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def api_keys(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_key]

    @property
    def served_model_names(self) -> list[str]:
        """The names this server answers to; the first is the canonical one."""
        if self.served_model_name:
            return list(dict.fromkeys(self.served_model_name))  # de-duplicated, order kept
        if self.model is None:
            return [DEFAULT_MODEL_NAME]
        path = Path(self.model.rstrip("/"))
        # a folder like "Qwen2.5-0.5B" keeps its whole name; a file loses its extension
        return [path.stem if path.is_file() else path.name]

    def read_chat_template(self) -> str | None:
        return Path(self.chat_template).read_text(encoding="utf-8") if self.chat_template else None
