"""Reasoning output: the thinking a model writes in ``<think>…</think>``, apart from its answer.

Qwen3 and the DeepSeek-R1 distills (qwen2 and llama models) think before they answer. The
server returns the thinking as ``message.reasoning_content`` (and ``reasoning``, the name
newer clients read) and streams it as ``delta.reasoning_content`` / ``delta.reasoning``;
``content`` is the answer after ``</think>``.

Where the thinking starts is read from the prompt, not guessed from the parser's name: a
template whose generation prompt leaves ``<think>`` open (the R1 distills, Qwen3's thinking
models) starts the output inside the thinking; otherwise (Qwen3, or enable_thinking off, where
the template writes an empty ``<think>\\n\\n</think>``) the output is the answer unless it opens
``<think>`` itself, after optional white space. The parsers ``deepseek_r1`` and ``qwen3`` (the
names vLLM uses for ``--reasoning-parser``) are the same ``<think>`` parser here for that reason.

Tags may arrive split across tokens (``</th`` + ``ink>``): text that may be the start of a tag
is held back until it is known not to be. White space around the thinking is not shown.
"""
from __future__ import annotations

import re

from server.tools import partial_suffix

OPEN, CLOSE = "<think>", "</think>"
PARSERS = ("auto", "none", "deepseek_r1", "qwen3")
THINK_PARSERS = ("deepseek_r1", "qwen3")  # both: the <think> parser below


def reasoning_parser_for(requested: str, chat_template: str | None) -> str | None:
    """The parser a model gets: ``requested`` (a name from PARSERS), where "auto" means the
    ``<think>`` parser when the chat template writes both tags, else none."""
    if requested not in PARSERS:
        raise ValueError(f"unknown reasoning parser {requested!r}; known: {', '.join(PARSERS)}")
    if requested == "none":
        return None
    if requested != "auto":
        return requested
    template = chat_template or ""
    if OPEN in template and CLOSE in template:
        return "deepseek_r1" if "｜Assistant｜" in template else "qwen3"
    return None


def starts_in_thinking(prompt: str) -> bool:
    """The prompt leaves ``<think>`` open: the output begins inside the thinking."""
    return prompt.rfind(OPEN) > prompt.rfind(CLOSE)


def template_switches(chat_template: str | None) -> set[str]:
    """The thinking switches a chat template reads (Qwen3: enable_thinking)."""
    template = chat_template or ""
    return {name for name in ("enable_thinking", "thinking", "reasoning_effort")
            if re.search(rf"(?<![\w.]){name}(?!\w)", template)}  # a variable: "thinking" is not enable_thinking


def thinking_kwargs(chat_template: str | None, reasoning_effort: str | None, kwargs: dict) -> dict:
    """``reasoning_effort`` onto the template's own switch, unless the request set it already:
    "none" turns thinking off, any other effort on; a template that reads reasoning_effort
    itself gets the value as is."""
    if reasoning_effort is None:
        return kwargs
    switches = template_switches(chat_template)
    out = dict(kwargs)
    if "reasoning_effort" in switches:
        out.setdefault("reasoning_effort", reasoning_effort)
    for name in ("enable_thinking", "thinking"):
        if name in switches:
            out.setdefault(name, reasoning_effort != "none")
    return out


class ReasoningStream:
    """One choice's text → (reasoning, content) pieces, as the text arrives.

    ``is_thinking``: the prompt left ``<think>`` open. ``num_reasoning_tokens`` is set when the
    thinking ends (the tokens up to and including ``</think>``) from the count passed to feed.
    """

    def __init__(self, is_thinking: bool) -> None:
        # start: the answer may still open <think> · thinking · after: white space after </think> · content
        self.mode = "thinking" if is_thinking else "start"
        self.buf = ""
        self.reasoning = ""  # all of it so far (shown pieces)
        self.content = ""
        self.has_reasoned = is_thinking
        self._is_reasoning_started = False  # leading white space of the thinking is dropped
        self.num_reasoning_tokens = 0

    @property
    def is_thinking(self) -> bool:
        return self.mode in ("start", "thinking")

    def feed(self, text: str, num_tokens: int = 0) -> tuple[str, str]:
        """New text (``num_tokens``: the choice's completion tokens so far) → (reasoning, content)."""
        self.buf += text
        reasoning, content = "", ""
        while True:
            mode = self.mode
            if mode == "start":
                head = self.buf.lstrip()
                if head.startswith(OPEN):
                    self.buf, self.mode, self.has_reasoned = head[len(OPEN):], "thinking", True
                    continue
                if OPEN.startswith(head):  # empty, or a proper prefix of <think>: wait
                    break
                self.mode = "content"
                continue
            if mode == "thinking":
                if not self._is_reasoning_started:
                    self.buf = self.buf.lstrip()
                    self._is_reasoning_started = bool(self.buf)
                end = self.buf.find(CLOSE)
                if end >= 0:
                    reasoning += self.buf[:end].rstrip()
                    self.buf, self.mode = self.buf[end + len(CLOSE):], "after"
                    self.num_reasoning_tokens = num_tokens
                    continue
                # hold back what may start </think>, and trailing white space (shown only if more follows)
                keep = partial_suffix(self.buf, CLOSE)
                shown = self.buf[: len(self.buf) - keep].rstrip()
                reasoning += shown
                self.buf = self.buf[len(shown):]
                break
            if mode == "after":
                self.buf = self.buf.lstrip()
                if self.buf:
                    self.mode = "content"
                    continue
                break
            content += self.buf  # content
            self.buf = ""
            break
        self.reasoning += reasoning
        self.content += content
        return reasoning, content

    def finish(self, num_tokens: int = 0) -> tuple[str, str]:
        """The choice ended: what was held back. A thinking never closed is all reasoning."""
        reasoning, content = self.feed("", num_tokens)
        rest_reasoning = rest_content = ""
        if self.mode == "start":
            rest_content = self.buf  # white space, or a lone "<thi"
        elif self.mode == "thinking":
            rest_reasoning = self.buf.rstrip()
            self.num_reasoning_tokens = num_tokens
        self.buf, self.mode = "", "content"
        self.reasoning += rest_reasoning
        self.content += rest_content
        return reasoning + rest_reasoning, content + rest_content


def split_reasoning(text: str, is_thinking: bool) -> tuple[str | None, str]:
    """A finished choice's whole text → (reasoning or None, content)."""
    stream = ReasoningStream(is_thinking)
    stream.feed(text)
    stream.finish()
    return (stream.reasoning if stream.has_reasoned else None), stream.content
