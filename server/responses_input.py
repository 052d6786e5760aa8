"""Responses input → stored items → the chat request the chat endpoint runs.

A Responses request becomes the same ``ChatCompletionRequest`` the chat endpoint runs, so the
template, sampling, tools and structured output are the chat path's. Input items are
normalized first (each gets an ``id``, the shape ``GET /v1/responses/{id}/input_items``
returns), and those normalized items are what becomes chat messages, here and when a later
request continues the conversation with ``previous_response_id``.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from server.errors import APIError, bad_request
from server.protocol_chat import ChatCompletionRequest
from server.protocol_responses import (TEXT_PART_TYPES, FunctionCallItem, FunctionCallOutputItem, InputPart,
                                       MessageItem, NamedFunctionChoice, ResponsesRequest, new_id)


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
                "max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort"}


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
    if request.reasoning and request.reasoning.get("effort") is not None:
        body["reasoning_effort"] = request.reasoning["effort"]  # a model that does not reason refuses it
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
