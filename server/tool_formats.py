"""The tool-call format each model family writes, parsed in ``auto`` mode.

- ``hermes`` (Qwen2/2.5/3, SmolLM2, and any template that does not know tools: the server's
  own tools prompt asks for it): ``<tool_call>{"name": …, "arguments": …}</tool_call>``,
  parsed by server/tools.py's ToolCallStream.
- ``llama3`` (Llama 3.1/3.2/3.3 templates): the answer is the call(s), a JSON object
  ``{"name": …, "parameters": …}``, optionally after ``<|python_tag|>``, several joined by ``;``.
- ``mistral`` (Mistral templates): ``[TOOL_CALLS][{"name": …, "arguments": …}, …]``.

The format comes from the chat template. ``<|python_tag|>`` and ``[TOOL_CALLS]`` are control
tokens that decoding may drop, so the JSON alone also starts a call. Text that starts like a
call is held back until the choice ends, then parsed whole: a call, or (if it does not parse
into known functions) content after all. With tool_choice "required" or a named function the
grammar writes the hermes form (server/tools.py), so that is what is parsed then.
"""
from __future__ import annotations

import json
from typing import Any

from server.tools import ToolCallStream, ToolSettings, new_call_id, parse_tool_calls

FORMATS = ("hermes", "llama3", "mistral")
_TRIGGERS = {"llama3": ("<|python_tag|>", "{"), "mistral": ("[TOOL_CALLS]", "[")}


def tool_format_for(chat_template: str | None) -> str:
    """The tool-call format a chat template's model writes (hermes unless it says otherwise)."""
    template = chat_template or ""
    if "tools" not in template:
        return "hermes"  # the server's tools prompt asks for hermes
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and '"parameters"' in template):
        return "llama3"
    return "hermes"


def parse_json_calls(text: str, fmt: str, names: set[str] | None) -> list[tuple[str, Any]] | None:
    """A llama3 or mistral answer → [(name, arguments)], or None if it is not (only) calls."""
    body = text.strip()
    for marker in ("<|python_tag|>", "[TOOL_CALLS]"):
        body = body.removeprefix(marker).strip()
    try:
        if fmt == "mistral":
            items = json.loads(body)
            items = items if isinstance(items, list) else [items]
        else:  # llama3: one object, or several joined by ";"
            decoder, items, pos = json.JSONDecoder(), [], 0
            while pos < len(body):
                item, end = decoder.raw_decode(body, pos)
                items.append(item)
                pos = end
                while pos < len(body) and body[pos] in " \t\r\n;":
                    pos += 1
    except ValueError:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        if names is not None and item["name"] not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        calls.append((item["name"], arguments))
    return calls or None


class JSONToolCallStream:
    """One choice's answer → content and tool-call deltas, for the llama3 and mistral formats
    (the same interface as ToolCallStream: feed, finish, calls, num_calls)."""

    def __init__(self, fmt: str, names: set[str] | None = None) -> None:
        self.fmt, self.names = fmt, names
        self.buf = ""
        self.mode = "start"  # start (white space so far) → held (may be calls) | text
        self.calls: list[dict] = []

    @property
    def num_calls(self) -> int:
        return len(self.calls)

    def feed(self, text: str) -> tuple[str, list[dict]]:
        if self.mode == "text":
            return text, []
        self.buf += text
        if self.mode == "start":
            head = self.buf.lstrip()
            if not head or any(t.startswith(head) for t in _TRIGGERS[self.fmt]):
                return "", []  # white space, or a marker not whole yet
            if head.startswith(_TRIGGERS[self.fmt]):
                self.mode = "held"
            else:
                self.mode, content, self.buf = "text", self.buf, ""
                return content, []
        return "", []

    def finish(self, is_length: bool = False) -> tuple[str, list[dict]]:
        """The rest; ``is_length``: the choice was cut by max_tokens, so held text that does not
        parse is a call cut short and is dropped, never returned as content."""
        text, self.buf = self.buf, ""
        was_held, self.mode = self.mode == "held", "text"
        calls = parse_json_calls(text, self.fmt, self.names) if was_held else None
        if calls is None:
            return ("" if was_held and is_length else text), []
        deltas = []
        for name, arguments in calls:
            self.calls.append({"id": new_call_id(), "name": name,
                               "arguments": json.dumps(arguments, ensure_ascii=False)})
            call, index = self.calls[-1], len(self.calls) - 1
            deltas += [{"index": index, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}},
                       {"index": index, "function": {"arguments": call["arguments"]}}]
        return "", deltas


def tool_stream(settings: ToolSettings):
    """The streaming parser for a request's tools: its family's format in auto mode; hermes when
    a grammar forces the calls (the grammar writes that form)."""
    if settings.format == "hermes" or settings.choice in ("required", "function"):
        return ToolCallStream(settings.names)
    return JSONToolCallStream(settings.format, settings.names)


def parse_calls(text: str, settings: ToolSettings, is_length: bool = False) -> tuple[str | None, list[dict]]:
    """A finished answer → (content or None, [{"id", "name", "arguments"}]), as parse_tool_calls;
    ``is_length``: cut by max_tokens (a cut call is dropped, not returned as content)."""
    if settings.format == "hermes" or settings.choice in ("required", "function"):
        return parse_tool_calls(text, settings.names, is_length)
    stream = JSONToolCallStream(settings.format, settings.names)
    content, _ = stream.feed(text)
    rest, _ = stream.finish(is_length)
    if not stream.calls:
        return (content + rest if is_length else text), []
    return (content + rest).strip() or None, stream.calls
