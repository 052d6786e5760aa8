"""OpenAI models shared by both endpoints (pydantic only; no engine logic): the sampling
fields, usage, model cards. Endpoint models: protocol_completions.py, protocol_chat.py.

Requests are strict (no "0.5"-string-as-number coercion, no NaN or infinity) and bounded
before the engine sees them. Unknown fields are ignored, as OpenAI's own clients send
vendor fields; known fields we cannot honour yet are rejected when set to anything but
their harmless default, naming the field.
"""
from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from engine import SamplingParams
from server.body_checks import check_body

MAX_N = 128
MAX_PROMPTS = 128
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
MAX_LOGIT_BIAS = 1024
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


class Unsupported(ValueError):
    """A field we cannot honour yet was set (the message names it)."""


logger = logging.getLogger("gptserve.server")
MAX_LOGGED_UNKNOWN = 256  # a client inventing field names cannot flood the log
_logged_unknown: set[str] = set()


class RequestModel(BaseModel):
    """Unknown fields are ignored, and each unknown name is logged once per process. A whole
    request body is checked first for lone surrogates and deep nesting (server/body_checks.py);
    models only ever nested in a body set ``is_request_body`` False to skip the second walk."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    is_request_body: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _log_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.model_config.get("extra") == "ignore":
            for key in data.keys() - cls.model_fields.keys():
                name = f"{cls.__name__}.{str(key)[:64]}"
                if name not in _logged_unknown and len(_logged_unknown) < MAX_LOGGED_UNKNOWN:
                    _logged_unknown.add(name)
                    logger.warning("ignoring unknown request field %r of %s (logged once)", str(key)[:64],
                                   cls.__name__)
        return data

    @model_validator(mode="before")  # defined last, so it runs first
    @classmethod
    def _check_body(cls, data: Any) -> Any:
        if cls.is_request_body:
            check_body(data)
        return data


class StreamOptions(RequestModel):
    is_request_body: ClassVar[bool] = False
    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # nothing is obfuscated here, so there is nothing to turn off


StopField = Union[Annotated[str, Field(max_length=MAX_STOP_CHARS)],
                  Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP_STRINGS)],
                  None]


class SamplingRequest(RequestModel):
    """The sampling fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: StopField = None
    seed: int | None = Field(None, ge=INT64_MIN, le=UINT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions that vLLM also accepts
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=MAX_STOP_STRINGS * 4)
    include_stop_str_in_output: bool | None = False

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):  # as OpenAI answers
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @model_validator(mode="after")
    def _min_tokens_le_max(self):
        if self.min_tokens and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported_fields(self) -> list[str]:
        return []

    def to_sampling_params(self, max_tokens: int | None = None) -> SamplingParams:
        """``max_tokens``: the effective limit serving worked out (None = rest of the context)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            n=self.n or 1,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k if self.top_k and self.top_k > 0 else None,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=bool(self.ignore_eos),
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
        )


# ----- responses -----

class ResponseModel(BaseModel):
    """Fields listed in ``omit_if_none`` are left out when None (the spec has them optional,
    not nullable); every other None is sent as null (the spec requires e.g. logprobs: null)."""

    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.omit_if_none)}


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(ResponseModel):
    reasoning_tokens: int = 0  # the thinking's tokens (reasoning models), counted in completion_tokens


class UsageInfo(ResponseModel):
    omit_if_none = frozenset({"prompt_tokens_details", "completion_tokens_details"})
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ModelCard(ResponseModel):
    """The spec's Model; the fields after ``owned_by`` are extensions (as vLLM adds max_model_len)."""

    omit_if_none = frozenset({"architecture", "quantization", "context_length", "reasoning", "reasoning_parser"})
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gptserve"
    max_model_len: int | None = None
    task: Literal["generate", "embed"] = "generate"  # extension: what the model serves
    architecture: str | None = None  # the model family: "llama", "qwen2", "qwen3", "gemma3" …
    quantization: str | None = None  # the weights' format as served: "Q4_1", "F32", "BF16", "int8" …
    context_length: int | None = None  # tokens of context (prompt + completion), the same as max_model_len
    reasoning: bool | None = None  # the model thinks apart from its answer (message.reasoning_content)
    reasoning_parser: str | None = None  # which parser splits the thinking off ("qwen3", "deepseek_r1")


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
