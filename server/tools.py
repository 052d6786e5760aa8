"""Tool calling: tools into the prompt, tool calls out of the text, streamed as deltas.

The format is Hermes / Qwen2.5's: the model writes each call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that knows tools (it reads ``tools``) renders them itself. For one that does
not (SmolLM2's), a system message lists the tools in <tools></tools> and asks for that format;
earlier assistant calls are written back the same way and tool results (role "tool") become
user turns in <tool_response></tool_response>. With tool_choice "required" or a named
function the output is constrained to that format by a grammar, with each function's
``parameters`` as the arguments' JSON schema.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.json_numbers import bound_numbers
from server.structured import GrammarSpec, close_objects, lark_json, lark_string

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')

TOOLS_SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def format_call(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


@dataclass
class ToolSettings:
    """A request's tools as the serving layer uses them: rendering, grammar, parsing."""

    tools: list[dict] = field(default_factory=list)  # [{"type": "function", "function": {...}}]
    choice: str = "auto"  # "none", "auto", "required" or "function"
    function_name: str | None = None  # the named function when choice == "function"
    parallel: bool = True
    legacy_functions: bool = False  # came as `functions` / `function_call`: answer with message.function_call
    format: str = "hermes"  # how the model writes calls: hermes, llama3 or mistral (server/tool_formats.py)

    @property
    def is_active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def grammar(self) -> GrammarSpec | None:
        """With "required" or a named function, the calls' grammar; else None (free text)."""
        if self.choice not in ("required", "function"):
            return None
        functions = [t["function"] for t in self.tools
                     if self.choice == "required" or t["function"]["name"] == self.function_name]
        calls, defs = [], {}
        for f in functions:
            parameters, f_defs = hoist_defs(close_objects(f.get("parameters") or {"type": "object"}), f["name"])
            defs.update(f_defs)
            calls.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": parameters},
                          "required": ["name", "arguments"], "additionalProperties": False})
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        if defs:
            schema = {**schema, "$defs": defs}
        schema = bound_numbers(schema)  # arguments' integers and numbers too (server/json_numbers.py)
        one = f"{lark_string(OPEN + chr(10))} {lark_json(schema)} {lark_string(chr(10) + CLOSE)}"
        many = self.parallel and self.choice == "required"
        lark = f"start: call ({lark_string(chr(10))} call)*\ncall: {one}\n" if many else f"start: {one}\n"
        return GrammarSpec("lark", lark, "tools")


def render_messages(messages: list[dict], settings: ToolSettings, template_knows_tools: bool) -> tuple[list[dict], list[dict] | None]:
    """Messages (already plain dicts, OpenAI shape) → what the chat template gets, and its ``tools``."""
    tools = settings.tools if settings.is_active else None
    if template_knows_tools:
        out = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):  # HF templates take the arguments as an object
                m["tool_calls"] = [{"type": "function", "id": c["id"], "function": {
                    "name": c["function"]["name"], "arguments": _loads_or_keep(c["function"]["arguments"])}}
                    for c in m["tool_calls"]]
            out.append(m)
        return out, tools
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        elif m.get("tool_calls"):
            calls = "\n".join(format_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            text = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content", "name", "reasoning_content")})
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        prompt = TOOLS_SYSTEM_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def hoist_defs(schema: dict, prefix: str) -> tuple[dict, dict]:
    """``schema`` without its ``$defs`` / ``definitions``, which come back renamed
    ``<prefix>.<name>`` with every ``#/$defs/…`` reference rewritten: a function's parameters
    move under ``arguments``, and their references must still resolve from the new root."""
    local = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def rewrite(node):
        if isinstance(node, list):
            return [rewrite(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items() if k not in ("$defs", "definitions")}
        ref = out.get("$ref")
        if isinstance(ref, str):
            for root in ("#/$defs/", "#/definitions/"):
                if ref.startswith(root):
                    out["$ref"] = f"#/$defs/{prefix}.{ref[len(root):]}"
            if ref == "#":
                out["$ref"] = f"#/$defs/{prefix}"  # the parameters themselves (recursive)
                local.setdefault("", schema)
        return out

    body = rewrite(schema)
    defs = {f"{prefix}.{name}": rewrite(d) for name, d in local.items() if name}
    if "" in local:
        defs[prefix] = body
    return body, defs


def _loads_or_keep(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


class ToolCallStream:
    """One choice's text → content deltas and tool-call deltas, as the text arrives.

    A call's first delta carries its index, id, type and name (arguments ""); argument
    fragments follow as the model writes them, so they concatenate to the arguments' JSON.
    Text that might be the start of <tool_call> is held back until it is known not to be.
    """

    def __init__(self, names: set[str] | None = None) -> None:
        self.names = names
        self.buf = ""
        self.mode = "text"  # text → head (after <tool_call>) → args → tail (until </tool_call>)
        self.calls: list[dict] = []  # {"id", "name", "arguments"} as emitted so far
        self._depth = 0
        self._in_string = self._escaped = False
        self._after_call = False  # whitespace between calls is not content
        self.is_cut = False  # the last call's arguments ended unfinished (finish() says)

    @property
    def num_calls(self) -> int:
        return len(self.calls)

    def feed(self, text: str) -> tuple[str, list[dict]]:
        """New text → (content to show, tool-call delta dicts)."""
        self.buf += text
        content, deltas = "", []
        while True:
            progressed, c, d = self._step()
            content += c
            deltas += d
            if not progressed:
                return content, deltas

    def finish(self, is_length: bool = False) -> tuple[str, list[dict]]:
        """The choice ended: whatever is held back. A call cut short (max_tokens) is dropped,
        never shown as content; one whose arguments were streamed already is ``is_cut``.
        ``is_length``: the output was cut, so a held-back "<tool_c" is a call's start, dropped."""
        content, deltas = self.feed("")
        if self.mode == "text":
            content, self.buf = content + ("" if is_length and self.buf else self.buf), ""
        elif self.mode == "head":  # <tool_call> never closed: the whole rest may still be one call
            content_, deltas_ = self._whole_call(self.buf)
            if not deltas_:  # not a whole call: a cut one, dropped
                content_ = ""
            content, deltas, self.buf = content + content_, deltas + deltas_, ""
        elif self.mode == "args":  # its arguments never closed
            self.is_cut, self.buf = True, ""
        return content, deltas

    def _step(self) -> tuple[bool, str, list[dict]]:
        if self.mode == "text":
            if self._after_call:
                self.buf = self.buf.lstrip()
                self._after_call = not self.buf
            i = self.buf.find(OPEN)
            if i >= 0:
                content, self.buf, self.mode = self.buf[:i], self.buf[i + len(OPEN):], "head"
                return True, content, []
            keep = partial_suffix(self.buf, OPEN)
            content, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
            return False, content, []
        if self.mode == "head":
            m = _HEAD.match(self.buf)
            if m and m.end() < len(self.buf):  # the value's first character has come
                name = _loads_or_keep(f'"{m.group(1)}"')  # a bad escape stays a non-name
                if self.names is None or name in self.names:
                    self.buf, self.mode = self.buf[m.end():], "args"
                    self._depth, self._in_string, self._escaped = 0, False, False
                    return True, "", [self._start_call(name)]
            end = self.buf.find(CLOSE)
            if end >= 0:  # not the streamable shape: parse the whole call at once
                whole, self.buf, self.mode = self.buf[:end], self.buf[end + len(CLOSE):], "text"
                content, deltas = self._whole_call(whole, closed=True)
                self._after_call = bool(deltas)
                return True, content, deltas
            return False, "", []
        if self.mode == "args":
            fragment, done = self._scan_arguments()
            deltas = [self._arguments_delta(fragment)] if fragment else []
            if done:
                self.mode = "tail"
            return done, "", deltas
        end = self.buf.find(CLOSE)  # tail: the call's closing brace and tag
        if end < 0:
            return False, "", []
        self.buf, self.mode, self._after_call = self.buf[end + len(CLOSE):], "text", True
        return True, "", []

    def _scan_arguments(self) -> tuple[str, bool]:
        """Take the arguments' JSON from the buffer up to where it ends (brace depth 0)."""
        for i, ch in enumerate(self.buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0:  # the arguments were a JSON string
                        fragment, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                        return fragment, True
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    fragment, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                    return fragment, True
        fragment, self.buf = self.buf, ""
        return fragment, False

    def _start_call(self, name: str) -> dict:
        self.calls.append({"id": new_call_id(), "name": name, "arguments": ""})
        call = self.calls[-1]
        return {"index": len(self.calls) - 1, "id": call["id"], "type": "function",
                "function": {"name": name, "arguments": ""}}

    def _arguments_delta(self, fragment: str) -> dict:
        self.calls[-1]["arguments"] += fragment
        return {"index": len(self.calls) - 1, "function": {"arguments": fragment}}

    def _whole_call(self, text: str, closed: bool = False) -> tuple[str, list[dict]]:
        try:
            call = json.loads(text)
            name = call["name"]
            arguments = call.get("arguments", call.get("parameters", {}))
            if not isinstance(name, str) or (self.names is not None and name not in self.names):
                raise ValueError(name)
        except (ValueError, KeyError, TypeError, AttributeError):
            return OPEN + text + (CLOSE if closed else ""), []
        if isinstance(arguments, str):
            arguments = _loads_or_keep(arguments)
        start = self._start_call(name)
        return "", [start, self._arguments_delta(json.dumps(arguments, ensure_ascii=False))]


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def parse_tool_calls(text: str, names: set[str] | None = None, is_length: bool = False) -> tuple[str | None, list[dict]]:
    """A finished choice's text → (content or None, [{"id", "name", "arguments"}]).

    A call cut short (the text ends inside it) is dropped, never returned as content. Calls
    whose arguments are otherwise not valid JSON leave the whole text as content, no calls.
    """
    stream = ToolCallStream(names)
    content, _ = stream.feed(text)
    rest, _ = stream.finish(is_length)
    content += rest
    calls = stream.calls[:-1] if stream.is_cut else stream.calls  # a call cut short is dropped
    for call in calls:
        try:
            json.loads(call["arguments"])
        except json.JSONDecodeError:
            return text, []
    if not stream.calls:
        return (text if content == text else content.strip() or None), []
    return (content.strip() or None), calls


def merge_call_deltas(deltas: list[dict]) -> list[dict]:
    """One entry per call index (a call's start and its first argument fragment arrive
    together): a client that reads ``delta.tool_calls[0]`` must see all of it, as OpenAI sends."""
    merged: dict[int, dict] = {}
    for delta in deltas:
        entry = merged.get(delta["index"])
        if entry is None:
            merged[delta["index"]] = {**delta, "function": dict(delta["function"])}
        else:
            for key, value in delta.items():
                if key != "function":
                    entry.setdefault(key, value)
            function = entry["function"]
            function["arguments"] = function.get("arguments", "") + delta["function"].get("arguments", "")
            if "name" in delta["function"]:
                function.setdefault("name", delta["function"]["name"])
    return list(merged.values())
