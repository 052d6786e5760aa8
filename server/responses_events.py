"""Engine outputs → Responses API output items and stream events (one builder for both).

``ResponseChunks`` is a ``ChatChunks``: the chat path's text accumulation and tool-call parsing
(``ToolCallStream``) run unchanged, and each chat delta becomes the Responses events in OpenAI's
order: an output item is added, its content part is added, text deltas, then the part, the text
and the item are done (a ``reasoning`` item the same way, with ``reasoning_text`` events, where
the chat path splits a model's thinking off as ``reasoning_content``); a function call is added,
its argument deltas follow, then done. The full (non-streamed) response is the same builder's
final state, so a streamed and a full response of the same generation have the same items.
"""
from __future__ import annotations

import time

from engine import TokenLogprob
from server import protocol_chat as pc
from server.errors import APIError
from server.protocol_responses import ResponsesRequest, new_id
from server.serving_chat import ChatChunks


class ResponseChunks(ChatChunks):
    """One response's output items and stream events (``n`` is 1 on this endpoint)."""

    def __init__(self, request_id: str, model: str, strings, request: ResponsesRequest, *, tools=None,
                 reasoning: bool | None = None) -> None:
        super().__init__(request_id, model, 1, False, strings, None, tools=tools, reasoning=reasoning)
        self.request = request
        self.created_at = int(time.time())
        self.sequence_number = 0
        self.output: list[dict] = []  # output items, in order; the open ones are updated in place
        self._text: dict | None = None  # the message or reasoning item being written
        self._calls: dict[int, dict] = {}  # tool-call index → its function_call item
        self.status = "in_progress"
        self.error: dict | None = None

    # ----- events -----

    def _event(self, type: str, **fields) -> dict:
        event = {"type": type, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def start(self) -> list[dict]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def update(self, k: int, out) -> list[dict]:
        # Chunks.update collects what text_chunk / finish_chunk return: here, lists of events
        return [event for events in super(ChatChunks, self).update(k, out) for event in events]

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> list[dict]:
        return self._on_delta(self._parsed_delta(index, text))

    def finish_chunk(self, index: int, reason: str) -> list[dict]:
        events = self._on_delta(self._parsed_delta(index, "", finish_reason=reason))
        item_status = "incomplete" if reason == "length" else "completed"
        if not any(item["type"] != "reasoning" for item in self.output):  # no answer: still one (empty) message
            events += self._open_text("message")
        events += self._close_text(item_status)
        for output_index, item in enumerate(self.output):
            if item["type"] == "function_call" and item["status"] == "in_progress":
                item["status"] = item_status
                events += [self._event("response.function_call_arguments.done", item_id=item["id"],
                                       output_index=output_index, name=item["name"], arguments=item["arguments"]),
                           self._event("response.output_item.done", output_index=output_index, item=dict(item))]
        self.status = "incomplete" if reason == "length" else "completed"
        return events

    def _on_delta(self, delta: pc.DeltaMessage) -> list[dict]:
        events = []
        thought = getattr(delta, "reasoning_content", None)  # a reasoning model's thinking, first
        if thought:
            events += self._add_text("reasoning", thought)
        if delta.content:
            events += self._add_text("message", delta.content)
        for call in delta.tool_calls or []:
            if call.id is not None:  # a new call: the text item before it (if any) is finished
                events += self._close_text("completed")
                item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": call.id, "name": call.function.name, "arguments": ""}
                self._calls[call.index] = item
                self.output.append(item)
                events.append(self._event("response.output_item.added", output_index=len(self.output) - 1,
                                          item=dict(item)))
            fragment = call.function.arguments if call.function is not None else None
            if fragment:
                item = self._calls[call.index]
                item["arguments"] += fragment
                events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=self.output.index(item), delta=fragment))
        return events

    def _add_text(self, kind: str, text: str) -> list[dict]:
        """Text for a ``message`` (output_text) or ``reasoning`` (reasoning_text) item."""
        events = [] if self._text is not None and self._text["type"] == kind else self._open_text(kind)
        item = self._text
        item["content"][0]["text"] += text
        delta = {"logprobs": []} if kind == "message" else {}
        events.append(self._event(_TEXT_EVENT[kind] + ".delta", item_id=item["id"], output_index=len(self.output) - 1,
                                  content_index=0, delta=text, **delta))
        return events

    def _open_text(self, kind: str) -> list[dict]:
        events = self._close_text("completed")
        if kind == "message":
            self._text = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                          "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            self._text = {"id": new_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [],
                          "content": []}
            part = {"type": "reasoning_text", "text": ""}
        self.output.append(self._text)
        output_index = len(self.output) - 1
        events += [self._event("response.output_item.added", output_index=output_index,
                               item={**self._text, "content": []}),
                   self._event("response.content_part.added", item_id=self._text["id"],
                               output_index=output_index, content_index=0, part=dict(part))]
        self._text["content"].append(part)
        return events

    def _close_text(self, status: str) -> list[dict]:
        item, self._text = self._text, None
        if item is None:
            return []
        output_index = self.output.index(item)
        part = item["content"][0]
        item["status"] = status
        done = {"logprobs": []} if item["type"] == "message" else {}
        return [self._event(_TEXT_EVENT[item["type"]] + ".done", item_id=item["id"], output_index=output_index,
                            content_index=0, text=part["text"], **done),
                self._event("response.content_part.done", item_id=item["id"], output_index=output_index,
                            content_index=0, part=dict(part)),
                self._event("response.output_item.done", output_index=output_index,
                            item={**item, "content": [dict(part)]})]

    def end(self) -> list[dict]:
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return [self._event(kind, response=self.response())]

    def failed(self, error: APIError) -> list[dict]:
        """A failure after the stream started: an ``error`` event, then ``response.failed``."""
        self.status = "failed"
        self.error = {"code": "rate_limit_exceeded" if error.status_code == 429 else "server_error",
                      "message": error.message}
        return [self._event("error", code=error.code or error.type, message=error.message, param=error.param),
                self._event("response.failed", response=self.response())]

    # ----- the Response object -----

    def usage_dict(self) -> dict:
        usage = self.usage()
        return {"input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens,
                                         "cache_write_tokens": 0},
                "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.total_tokens}

    def response(self) -> dict:
        """The Response as it stands (in progress, or final with usage)."""
        request = self.request
        is_done = self.status in ("completed", "incomplete", "failed")
        body = {
            "id": self.request_id, "object": "response", "created_at": self.created_at,
            "status": self.status, "completed_at": int(time.time()) if self.status == "completed" else None,
            "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if self.status == "incomplete" else None,
            "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
            "model": self.model, "output": [_copy_item(i) for i in self.output] if is_done else [],
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id, "reasoning": None,
            "service_tier": "default", "store": request.store is not False,
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "text": request.text_echo(), "tool_choice": request.tool_choice_echo(), "tools": request.tools_echo(),
            "top_p": 1.0 if request.top_p is None else request.top_p, "truncation": "disabled",
            "metadata": request.metadata or {}, "background": False,
            "safety_identifier": request.safety_identifier, "prompt_cache_key": request.prompt_cache_key,
        }
        if is_done and self.status != "failed":
            body["usage"] = self.usage_dict()
        if request.user is not None:
            body["user"] = request.user
        return body

    def full_response(self) -> dict:
        return self.response()


_TEXT_EVENT = {"message": "response.output_text", "reasoning": "response.reasoning_text"}


def _copy_item(item: dict) -> dict:
    return {**item, "content": [dict(p) for p in item["content"]]} if "content" in item else dict(item)
