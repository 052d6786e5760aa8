"""OpenAI request, response and stream-chunk models (pydantic only; no engine logic).

Requests are strict (no "0.5"-string-as-number coercion, no NaN or infinity) and bounded
before the engine sees them. Unknown fields are ignored, as OpenAI's own clients send
vendor fields; known fields we cannot honour yet are rejected when set to anything but
their harmless default, naming the field.
"""
from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from engine import SamplingParams

MAX_N = 128
MAX_PROMPTS = 128
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
MAX_LOGIT_BIAS = 1024
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


class Unsupported(ValueError):
    """A field we cannot honour yet was set (the message names it)."""


class RequestModel(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(RequestModel):
    include_usage: bool | None = False


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


PromptField = Union[str,
                    Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
                    Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                    Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                              Field(min_length=1, max_length=MAX_PROMPTS)]]


class CompletionRequest(SamplingRequest):
    prompt: PromptField
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    def unsupported_fields(self) -> list[str]:
        bad = []
        if self.best_of is not None and self.best_of != (self.n or 1):
            bad.append("best_of")
        if self.echo:
            bad.append("echo")
        if self.logprobs is not None:
            bad.append("logprobs")
        if self.suffix:
            bad.append("suffix")
        return bad


class ContentPart(RequestModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text":
            raise ValueError(f"only text content parts are supported, not {self.type!r}")
        if self.text is None:
            raise ValueError("a text part needs 'text'")
        return self


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None

    @model_validator(mode="after")
    def _has_content(self):
        if self.tool_calls:
            raise Unsupported("tool_calls in messages are not supported yet")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _min_tokens_le_max_completion(self):
        limit = self.requested_max_tokens()
        if self.min_tokens and limit is not None and self.min_tokens > limit:
            raise ValueError("min_tokens must not exceed max_completion_tokens")
        return self

    def requested_max_tokens(self) -> int | None:
        # max_tokens is deprecated in favour of max_completion_tokens; the newer one wins
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported_fields(self) -> list[str]:
        bad = [name for name in ("tools", "functions", "audio", "prediction") if getattr(self, name)]
        if self.logprobs:
            bad.append("logprobs")
        if self.top_logprobs:
            bad.append("top_logprobs")
        if self.tool_choice not in (None, "none", "auto"):
            bad.append("tool_choice")
        if self.function_call not in (None, "none", "auto"):
            bad.append("function_call")
        if self.response_format and self.response_format.get("type") != "text":
            bad.append("response_format")
        if self.modalities and self.modalities != ["text"]:
            bad.append("modalities")
        return bad


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


class UsageInfo(ResponseModel):
    omit_if_none = frozenset({"prompt_tokens_details"})
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(ResponseModel):
    """Both the full response and each stream chunk (the spec uses one shape for both)."""

    omit_if_none = frozenset({"usage"})
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: None = None  # required by the spec, always null here


class ChatChoice(ResponseModel):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(ResponseModel):
    omit_if_none = frozenset({"role", "content"})
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(ResponseModel):
    omit_if_none = frozenset({"usage"})
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gptserve"
    max_model_len: int | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
