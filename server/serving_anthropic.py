"""/v1/messages and /v1/messages/count_tokens: the Anthropic request → the chat path's prompt,
sampling and guide → engine → an Anthropic ``message`` or its stream events.

``MessageChunks`` is a ``ChatChunks``, so the chat path's tool-call parser runs unchanged; each
chat delta becomes Anthropic's events: a content block starts, its deltas (``text_delta`` or
``input_json_delta``), it stops; ``message_delta`` carries the stop reason and the usage. Errors
use Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.
"""
from __future__ import annotations

import asyncio
import json
import uuid

from fastapi.responses import JSONResponse

from engine import TokenLogprob
from server import protocol_chat as pc
from server.protocol_anthropic import CountTokensRequest, MessagesRequest
from server.serving import OpenAIServing
from server.serving_chat import ChatChunks
from server.serving_events import named_event_stream

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
                413: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_error(status_code: int, message: str) -> dict:
    error_type = _ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


class MessageChunks(ChatChunks):
    """One message's content blocks and stream events (``n`` is 1 on this endpoint)."""

    def __init__(self, request_id: str, model: str, strings, num_prompt_tokens: int, *, tools=None,
                 reasoning: bool | None = None) -> None:
        super().__init__(request_id, model, 1, False, strings, None, tools=tools, reasoning=reasoning)
        self.num_prompt_tokens_known = num_prompt_tokens
        self.blocks: list[dict] = []  # content blocks, in order; tool_use input kept as JSON text until the end
        self._open: int | None = None  # index of the block being written
        self._calls: dict[int, int] = {}  # tool-call index → block index
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None

    def update(self, k: int, out) -> list[dict]:
        for choice in out.outputs:
            if isinstance(choice.stop_reason, str):
                self.stop_sequence = choice.stop_reason
        return [event for events in super(ChatChunks, self).update(k, out) for event in events]

    def message(self, content: list[dict], stop_reason: str | None, output_tokens: int) -> dict:
        usage = self.usage() if stop_reason else None
        return {"id": self.request_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": stop_reason,
                "stop_sequence": self.stop_sequence if stop_reason == "stop_sequence" else None,
                "usage": {"input_tokens": usage.prompt_tokens if usage else self.num_prompt_tokens_known,
                          "output_tokens": output_tokens,
                          "cache_read_input_tokens": usage.prompt_tokens_details.cached_tokens if usage else 0,
                          "cache_creation_input_tokens": 0}}

    def start(self) -> list[dict]:
        return [{"type": "message_start", "message": self.message([], None, 0)}]

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> list[dict]:
        return self._on_delta(self._parsed_delta(index, text))

    def _on_delta(self, delta: pc.DeltaMessage) -> list[dict]:
        events = []
        thought = getattr(delta, "reasoning_content", None)  # a reasoning model's thinking, first
        if thought:
            events += self._add_text("thinking", thought)
        if delta.content:
            events += self._add_text("text", delta.content)
        for call in delta.tool_calls or []:
            if call.id is not None:
                events += self._stop_block() + self._start_block(
                    {"type": "tool_use", "id": tool_use_id(call.id), "name": call.function.name, "input": {}})
                self._calls[call.index] = self._open
                self.blocks[self._open]["partial_json"] = ""
            fragment = call.function.arguments if call.function is not None else None
            if fragment:
                block_index = self._calls[call.index]
                self.blocks[block_index]["partial_json"] += fragment
                events.append({"type": "content_block_delta", "index": block_index,
                               "delta": {"type": "input_json_delta", "partial_json": fragment}})
        return events

    def _add_text(self, kind: str, text: str) -> list[dict]:
        """Text for a ``text`` block (text_delta) or a ``thinking`` block (thinking_delta)."""
        events = []
        if self._open is None or self.blocks[self._open]["type"] != kind:
            block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
            events += self._stop_block() + self._start_block(block)
        self.blocks[self._open][kind] += text
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta", "thinking": text}
        events.append({"type": "content_block_delta", "index": self._open, "delta": delta})
        return events

    def _start_block(self, block: dict) -> list[dict]:
        self.blocks.append(block)
        self._open = len(self.blocks) - 1
        return [{"type": "content_block_start", "index": self._open, "content_block": dict(block)}]

    def _stop_block(self) -> list[dict]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [{"type": "content_block_stop", "index": index}]

    def finish_chunk(self, index: int, reason: str) -> list[dict]:
        events = self._on_delta(self._parsed_delta(index, "", finish_reason=reason)) + self._stop_block()
        if reason == "stop" and self.stop_sequence is not None:
            self.stop_reason = "stop_sequence"
        elif reason == "stop" and any(b["type"] == "tool_use" for b in self.blocks):
            self.stop_reason = "tool_use"
        else:
            self.stop_reason = _STOP_REASONS.get(reason, "end_turn")
        return events

    def end(self) -> list[dict]:
        usage = self.usage()
        return [{"type": "message_delta",
                 "delta": {"stop_reason": self.stop_reason,
                           "stop_sequence": self.stop_sequence if self.stop_reason == "stop_sequence" else None},
                 "usage": {"output_tokens": usage.completion_tokens}},
                {"type": "message_stop"}]

    def content(self) -> list[dict]:
        out = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                out.append({"type": "tool_use", "id": block["id"], "name": block["name"],
                            "input": _json_object(block["partial_json"])})
            else:
                out.append(dict(block))
        return out

    def full_response(self) -> dict:
        return self.message(self.content(), self.stop_reason, self.usage().completion_tokens)

    def failed(self, error) -> list[dict]:
        """A failure after the stream started: Anthropic's in-band ``error`` event."""
        return [anthropic_error(error.status_code, error.message)]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def count_tokens(serving: OpenAIServing, request: CountTokensRequest) -> JSONResponse:
    serving.resolve_model(request.model)
    _, ids = await asyncio.to_thread(serving.chat.prompt, request.to_chat_request())  # off the event loop
    return JSONResponse({"input_tokens": len(ids)})


async def create_message(serving: OpenAIServing, request: MessagesRequest):
    model_name = serving.resolve_model(request.model)
    prompts, params, tools, reasoning = await serving.chat.prepare(request.to_chat(), "messages")
    chunks = MessageChunks(f"msg_{uuid.uuid4().hex}", model_name, serving.chat.strings, len(prompts[0]),
                           tools=tools if tools.is_active else None, reasoning=reasoning)
    if request.stream:
        return named_event_stream(serving, prompts, params, chunks)
    return await serving.respond(prompts, params, chunks)
