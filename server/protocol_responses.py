"""/v1/responses request models (pydantic only), and the request → chat request translation.

A Responses request becomes the same ``ChatCompletionRequest`` the chat endpoint runs, so the
template, sampling, tools and structured output are the chat path's. Input items are
normalized first (each gets an ``id``, the shape ``GET /v1/responses/{id}/input_items``
returns), and those normalized items are what becomes chat messages, here and when a later
request continues the conversation with ``previous_response_id``.
"""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, ValidationError, model_validator

from server.errors import APIError, bad_request
from server.protocol import RequestModel
from server.protocol_chat import ChatCompletionRequest
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
            "reasoning": ("the models served do not reason apart from their answer"
                          if self.reasoning and self.reasoning.get("effort") not in (None, "none") else None),
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


# ----- input items: normalized, then chat messages -----

def _parts_text(content: str | list[InputPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type in TEXT_PART_TYPES)


def normalize_items(request: ResponsesRequest) -> list[dict]:
    """The request's input as stored items (ItemResource shapes), each with an id."""
    if isinstance(request.input, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": request.input}]}]
    items = []
    for item in request.input:
        if isinstance(item, MessageItem):
            text = _parts_text(item.content)
            if item.role == "assistant":
                items.append({"id": item.id or new_id("msg"), "type": "message", "role": "assistant",
                              "status": "completed", "content": [
                                  {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
            else:
                items.append({"id": item.id or new_id("msg"), "type": "message", "role": item.role,
                              "status": "completed", "content": [{"type": "input_text", "text": text}]})
        elif isinstance(item, FunctionCallItem):
            items.append({"id": item.id or new_id("fc"), "type": "function_call", "call_id": item.call_id,
                          "name": item.name, "arguments": item.arguments, "status": "completed"})
        elif isinstance(item, FunctionCallOutputItem):
            items.append({"id": item.id or new_id("fco"), "type": "function_call_output", "call_id": item.call_id,
                          "output": _parts_text(item.output), "status": "completed"})
    return items


def items_to_messages(items: list[dict]) -> list[dict]:
    """Stored items (input and earlier outputs) → chat messages; calls join the assistant turn."""
    messages: list[dict] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(p.get("text") or "" for p in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


_PARAM_NAMES = {"messages": "input", "max_completion_tokens": "max_output_tokens", "response_format": "text.format",
                "max_tokens": "max_output_tokens"}


def rename_param(param: str | None) -> str | None:
    """A chat request's field name, as the Responses request calls it."""
    if param is None:
        return None
    head, dot, rest = param.partition(".")
    base = head.split("[")[0]
    return _PARAM_NAMES[base] if base in _PARAM_NAMES else param


def to_chat_request(request: ResponsesRequest, items: list[dict]) -> ChatCompletionRequest:
    """The chat request that generates this response (``items``: the whole conversation)."""
    messages = ([{"role": "developer", "content": request.instructions}] if request.instructions else [])
    messages += items_to_messages(items)
    if not messages:
        raise bad_request("'input' must hold at least one message.", param="input")
    body: dict[str, Any] = {"messages": messages, "stream": bool(request.stream)}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "metadata"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    if request.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            **({"parameters": t.parameters} if t.parameters is not None else {})}} for t in request.tools]
    if isinstance(request.tool_choice, NamedFunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name or ""}}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, "strict": bool(fmt.strict)}}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        raise bad_request(f"Invalid request: {error['msg']} ({loc}).",
                          param=rename_param(loc) or None, code="invalid_value") from None


def check_supported(request: ResponsesRequest) -> None:
    bad = request.unsupported()
    if bad is not None:
        param, why = bad
        raise APIError(400, f"Not supported: {param}: {why}.", param=param, code="unsupported_parameter")
