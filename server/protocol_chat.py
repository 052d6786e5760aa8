"""/v1/chat/completions request, response and stream-chunk models (pydantic only)."""
from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from engine import SamplingParams
from server.protocol import RequestModel, ResponseModel, SamplingRequest, UsageInfo
from server.protocol_tools import (MAX_TOOLS, ChatTool, FunctionCall, FunctionCallDelta, FunctionCallInMessage,
                                   FunctionDefinition, GuidedFields, NamedFunction, NamedToolChoice, ResponseFormat,
                                   ToolCall, ToolCallDelta, ToolCallInMessage, ToolChoice)
from server.tools import ToolSettings

MAX_TOP_LOGPROBS = 20  # the spec's limit
# Template variables a request may set: switches that common templates read. Everything else a
# template sees (messages, tools, add_generation_prompt, bos_token …) is the server's to set.
CHAT_TEMPLATE_KWARGS = frozenset({"enable_thinking", "thinking", "reasoning_effort", "date_string"})


class ContentPart(RequestModel):
    is_request_body: ClassVar[bool] = False  # part of a body
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
    is_request_body: ClassVar[bool] = False  # part of a body
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallInMessage] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    function_call: FunctionCallInMessage | None = None  # the deprecated single-call form of tool_calls
    # an assistant's earlier thinking, as this server (and vLLM) return it; templates such as
    # Qwen3's read reasoning_content
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest, GuidedFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)] | None = None  # deprecated tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # deprecated tool_choice
    response_format: ResponseFormat | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    moderation: Any = None
    store: bool | None = False
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    # extensions that vLLM also accepts
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, str | bool | int | float | None] | None = None

    @field_validator("chat_template_kwargs", mode="before")
    @classmethod
    def _whitelisted(cls, value: object) -> object:
        unknown = sorted(set(value) - CHAT_TEMPLATE_KWARGS) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(f"not allowed: {', '.join(map(repr, unknown))}; the allowed keys are "
                             f"{', '.join(sorted(CHAT_TEMPLATE_KWARGS))}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _continue_final_message(cls, value: bool, info: ValidationInfo) -> bool:
        messages = info.data.get("messages")
        if value and messages and messages[-1].role != "assistant":
            raise ValueError("it needs the last message to be the assistant's")
        if value and info.data.get("add_generation_prompt"):
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return value

    @property
    def is_generation_prompt_added(self) -> bool:
        """add_generation_prompt, by default true unless the final message is continued."""
        if self.add_generation_prompt is None:
            return not self.continue_final_message
        return self.add_generation_prompt
        if self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be the assistant's")
        if "add_generation_prompt" not in self.model_fields_set:
            self.add_generation_prompt = False  # implied: the assistant's turn is the open one
        elif self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return self

    @model_validator(mode="after")
    def _min_tokens_le_max_completion(self):
        limit = self.requested_max_tokens()
        if self.min_tokens and limit is not None and self.min_tokens > limit:
            raise ValueError("min_tokens must not exceed max_completion_tokens")
        return self

    def requested_max_tokens(self) -> int | None:
        # max_tokens is deprecated in favour of max_completion_tokens; the newer one wins
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def to_sampling_params(self, max_tokens: int | None = None) -> SamplingParams:
        params = super().to_sampling_params(max_tokens)
        params.logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return params

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_its_tool(cls, value, info: ValidationInfo):
        if value in (None, "none", "auto"):
            return value
        names = {t.function.name for t in info.data.get("tools") or []}
        if not names:
            raise ValueError(f"tool_choice {value if isinstance(value, str) else 'naming a function'} needs tools")
        if isinstance(value, NamedToolChoice) and value.function.name not in names:
            raise ValueError(f"it names {value.function.name!r}, which is not among the tools")
        return value

    @field_validator("function_call")
    @classmethod
    def _function_call_needs_its_function(cls, value, info: ValidationInfo):
        names = {f.name for f in info.data.get("functions") or []}
        if isinstance(value, NamedFunction) and value.name not in names:
            raise ValueError(f"it names {value.name!r}, which is not among the functions")
        return value

    @model_validator(mode="after")
    def _tools_or_functions(self):
        if self.tools and self.functions:
            raise ValueError("give tools or the deprecated functions, not both")
        return self

    def tool_settings(self) -> ToolSettings:
        if self.functions:  # the deprecated form: one call, answered as message.function_call
            named = self.function_call.name if isinstance(self.function_call, NamedFunction) else None
            return ToolSettings(tools=[{"type": "function", "function": f.model_dump(exclude_none=True)}
                                       for f in self.functions],
                                choice="function" if named else (self.function_call or "auto"),
                                function_name=named, parallel=False, legacy_functions=True)
        choice, name = "auto", None
        if isinstance(self.tool_choice, NamedToolChoice):
            choice, name = "function", self.tool_choice.function.name
        elif self.tool_choice is not None:
            choice = self.tool_choice
        return ToolSettings(tools=[t.model_dump(exclude_none=True, by_alias=True) for t in self.tools or []],
                            choice=choice, function_name=name, parallel=self.parallel_tool_calls is not False)

    def unsupported_fields(self) -> list[str]:
        bad = [name for name in ("audio", "prediction", "web_search_options", "moderation",
                                 "store", "prompt_cache_options") if getattr(self, name)]
        if self.service_tier not in (None, "auto", "default"):
            bad.append("service_tier")  # one tier here
        if self.verbosity not in (None, "medium"):
            bad.append("verbosity")
        if self.prompt_cache_retention == "24h":
            bad.append("prompt_cache_retention")  # the prefix cache lives in memory only
        if self.modalities and self.modalities != ["text"]:
            bad.append("modalities")
        return bad


# ----- responses -----

class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's real bytes, which may be part of a UTF-8 character


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: None = None  # required by the spec, always null here


class ResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    omit_if_none = frozenset({"tool_calls", "function_call", "reasoning_content", "reasoning"})
    content: str | None = None
    refusal: None = None  # required by the spec, always null here
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # requests that used the deprecated `functions`
    # extensions (vLLM's): a reasoning model's thinking, apart from content; both names carry it
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatChoice(ResponseModel):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"] | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(ResponseModel):
    omit_if_none = frozenset({"role", "content", "tool_calls", "function_call", "reasoning_content", "reasoning"})
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None
    reasoning_content: str | None = None  # extension: a piece of the thinking (see ResponseMessage)
    reasoning: str | None = None


class ChatStreamChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"] | None = None


class ChatCompletionChunk(ResponseModel):
    omit_if_none = frozenset({"usage"})
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


