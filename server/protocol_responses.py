"""/v1/responses request models (pydantic only); responses_input.py turns them into the chat
request the chat path runs."""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, model_validator

from server.protocol import RequestModel
from server.protocol_tools import FUNCTION_NAME, MAX_TOOLS, LooseModel

TEXT_PART_TYPES = ("input_text", "output_text", "text")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class InputPart(LooseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type not in TEXT_PART_TYPES and self.type != "refusal":
            raise ValueError(f"only text content parts are supported, not {self.type!r}: the models served read text")
        if self.type in TEXT_PART_TYPES and self.text is None:
            raise ValueError(f"a {self.type} part needs 'text'")
        return self


class MessageItem(LooseModel):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]
    status: str | None = None


class FunctionCallItem(LooseModel):
    type: Literal["function_call"]
    id: str | None = None
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    arguments: str
    status: str | None = None


class FunctionCallOutputItem(LooseModel):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    output: str | list[InputPart]
    status: str | None = None


class ReasoningInputItem(LooseModel):
    """An earlier answer's reasoning, sent back by clients that replay whole outputs: skipped."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    type: Literal["reasoning"]


InputItem = Annotated[Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningInputItem],
                      Field(discriminator="type")]


class FunctionToolParam(LooseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")  # other tool types: refused later
    type: str
    name: Annotated[str, Field(pattern=FUNCTION_NAME)] | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(LooseModel):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=FUNCTION_NAME)] | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needs_name(self):
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type json_schema needs 'name' and 'schema'")
        return self


class TextParam(LooseModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class NamedFunctionChoice(LooseModel):
    type: str
    name: str | None = None


class ResponsesRequest(RequestModel):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: Annotated[list[FunctionToolParam], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: str | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: Any = None
    context_management: Any = None
    moderation: Any = None

    @model_validator(mode="before")
    @classmethod
    def _message_is_the_default_type(cls, data: Any) -> Any:
        items = data.get("input") if isinstance(data, dict) else None
        if isinstance(items, list):  # an easy input message ({"role", "content"}) needs no "type"
            data = {**data, "input": [{**i, "type": "message"} if isinstance(i, dict) and "type" not in i else i
                                      for i in items]}
        return data

    def unsupported(self) -> tuple[str, str] | None:
        """The first field set to a value this server cannot honour, and why; else None."""
        for i, tool in enumerate(self.tools or []):
            if tool.type != "function":
                return f"tools[{i}]", (f"tool type {tool.type!r} is not supported: only function tools run here "
                                       f"(the server has no built-in tools)")
            if tool.name is None:
                return f"tools[{i}].name", "a function tool needs a name"
        reasons = {
            "background": "background responses are not supported" if self.background else None,
            "conversation": "conversations are not stored here; use previous_response_id" if self.conversation else None,
            "prompt": "stored prompt templates do not exist here" if self.prompt else None,
            "context_management": "context management is not supported" if self.context_management else None,
            "moderation": "no moderation model runs here" if self.moderation else None,
            "prompt_cache_options": "the prefix cache is automatic" if self.prompt_cache_options else None,
            "truncation": "inputs over the context are refused, not truncated" if self.truncation == "auto" else None,
            "top_logprobs": "logprobs are not returned by this endpoint yet" if self.top_logprobs else None,
            "prompt_cache_retention": "the prefix cache lives in memory only" if self.prompt_cache_retention == "24h" else None,
            "service_tier": "there is one tier" if self.service_tier not in (None, "auto", "default") else None,
            "text.verbosity": ("nothing steers a model's verbosity faithfully"
                               if self.text and self.text.verbosity not in (None, "medium") else None),
            "include": ("logprobs are not returned by this endpoint yet"
                        if "message.output_text.logprobs" in (self.include or []) else None),
        }
        if isinstance(self.tool_choice, NamedFunctionChoice) and self.tool_choice.type != "function":
            reasons["tool_choice"] = f"tool_choice type {self.tool_choice.type!r} is not supported: only functions"
        return next(((k, v) for k, v in reasons.items() if v), None)

    # ----- echoed in the Response -----

    def tools_echo(self) -> list[dict]:
        return [{"type": "function", "name": t.name, "description": t.description,
                 "parameters": t.parameters, "strict": t.strict} for t in self.tools or []]

    def tool_choice_echo(self) -> str | dict:
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return {"type": "function", "name": self.tool_choice.name}
        return self.tool_choice or "auto"

    def text_echo(self) -> dict:
        fmt = self.text.format if self.text and self.text.format else TextFormat(type="text")
        out = {"type": fmt.type}
        if fmt.type == "json_schema":
            out.update(name=fmt.name, schema=fmt.schema_, strict=bool(fmt.strict),
                       **({"description": fmt.description} if fmt.description else {}))
        return {"format": out, "verbosity": "medium"}
