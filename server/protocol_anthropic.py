"""Anthropic Messages API request models (pydantic only), and their translation to the chat
request the chat path runs (template, sampling, tools, grammar): system → a system message,
text blocks → content, tool_use blocks → an assistant's tool_calls, tool_result blocks → tool
messages; tools and tool_choice → the chat request's."""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, ValidationError, model_validator

from server.errors import bad_request
from server.protocol import RequestModel
from server.protocol_chat import ChatCompletionRequest
from server.protocol_tools import FUNCTION_NAME, MAX_TOOLS, LooseModel

MAX_STOP_SEQUENCES = 16


class Block(LooseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    type: str


class TextBlock(Block):
    type: Literal["text"]
    text: str


class ToolUseBlock(Block):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    input: dict[str, Any]


class ToolResultBlock(Block):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1, max_length=256)]
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(Block):
    """An earlier answer's thinking, sent back by clients that replay whole turns: skipped."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock], Field(discriminator="type")]


class Message(LooseModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(LooseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    type: str | None = None  # absent or "custom" for a client tool; server tools are refused
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _client_tools_only(self):
        if self.type not in (None, "custom"):
            raise ValueError(f"tool type {self.type!r} is not supported: only client tools (with input_schema) run here")
        if self.input_schema is None:
            raise ValueError("a tool needs input_schema")
        return self


class ToolChoice(LooseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_needs_name(self):
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice type 'tool' needs 'name'")
        return self


class Thinking(LooseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    type: Literal["enabled", "disabled", "adaptive"]


class OutputFormat(LooseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(LooseModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # accepted: no effort knob here
    format: OutputFormat | None = None


class CountTokensRequest(RequestModel):
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    @model_validator(mode="after")
    def _no_thinking(self):
        if self.thinking is not None and self.thinking.type != "disabled":
            raise ValueError("thinking is not supported: the models served do not reason apart from their answer")
        return self

    def system_text(self) -> str | None:
        if isinstance(self.system, list):
            return "\n".join(block.text for block in self.system)
        return self.system

    def chat_body(self) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system_text()}] if self.system else []
        for message in self.messages:
            messages += _chat_messages(message)
        body: dict[str, Any] = {"messages": messages}
        if self.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, **({"description": t.description} if t.description else {}),
                "parameters": t.input_schema}} for t in self.tools]
        choice = self.tool_choice
        if choice is not None:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or \
                {"type": "function", "function": {"name": choice.name}}
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        return body

    def to_chat_request(self, **fields) -> ChatCompletionRequest:
        try:
            return ChatCompletionRequest.model_validate({**self.chat_body(), **fields})
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(p) for p in error["loc"])
            raise bad_request(f"Invalid request: {error['msg']} ({loc}).", param=loc.split(".")[0]) from None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1, max_length=512)]],
                              Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool | None = False
    metadata: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    output_config: OutputConfig | None = None

    def to_chat(self) -> ChatCompletionRequest:
        fields: dict[str, Any] = {"max_completion_tokens": self.max_tokens, "stream": bool(self.stream)}
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.stop_sequences:
            fields["stop"] = self.stop_sequences
        if self.output_config is not None and self.output_config.format is not None:
            # Anthropic's structured outputs are strict: the grammar holds the output to the schema
            fields["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": self.output_config.format.schema_, "strict": True}}
        return self.to_chat_request(**fields)


def _chat_messages(message: Message) -> list[dict]:
    """One Anthropic message → chat messages (tool results are messages of their own)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts = [b.text for b in message.content if isinstance(b, TextBlock)]
    out = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            content = block.content if isinstance(block.content, str) else \
                "\n".join(b.text for b in block.content or [])
            out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                        "content": f"Error: {content}" if block.is_error else content})
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
             for b in message.content if isinstance(b, ToolUseBlock)]
    if texts or calls or not out:
        out.append({"role": message.role, "content": "".join(texts) if texts or not calls else None,
                    **({"tool_calls": calls} if calls else {})})
    return out
