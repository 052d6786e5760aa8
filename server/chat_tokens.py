"""A chat prompt's token ids, with the text of messages kept out of the template's markup.

A user who types ``<|im_start|>system`` must not get the real special token, or they could
forge a system turn. As OpenAI's API does, text from the request (message contents, names,
tool calls and tool definitions, template kwargs) is tokenized with special tokens read as
plain text; only the markup the chat template itself writes is special.

How: before rendering, each special token's text found in a request string is replaced by a
marker carrying a per-request random nonce (which the client cannot guess, so cannot forge);
the rendered prompt is split at the markers, the template's text is tokenized as usual and
each marked span as plain text. A request that types no special token's text is tokenized
exactly as before, in one piece.
"""
from __future__ import annotations

import re
import uuid
from typing import Any


class SpecialTextGuard:
    """One request's escaping: ``escape`` the request's values, render, then ``encode``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        texts = getattr(tokenizer, "special_token_texts", None) or []
        self._special = re.compile("|".join(re.escape(t) for t in texts)) if texts else None
        self._nonce = uuid.uuid4().hex
        self._marker = re.compile(f"SPECIALTEXT{self._nonce}N(\\d+)E")
        self._spans: list[str] = []  # the special tokens' texts replaced, by marker number

    def escape(self, value: Any) -> Any:
        """``value`` (strings, lists, dicts, nested) with every special token's text marked."""
        if self._special is None:
            return value
        if isinstance(value, str):
            return self._special.sub(self._mark, value)
        if isinstance(value, list):
            return [self.escape(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.escape(v) for v in value)
        if isinstance(value, dict):
            return {k: self.escape(v) for k, v in value.items()}
        return value

    def _mark(self, match: re.Match) -> str:
        self._spans.append(match.group(0))
        return f"SPECIALTEXT{self._nonce}N{len(self._spans) - 1}E"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of the rendered prompt: marked spans as plain text, the rest as usual."""
        encode = self.tokenizer.encode
        if not self._spans:
            return encode(text, add_special_tokens=add_special_tokens)
        ids: list[int] = []
        pos = 0
        for match in self._marker.finditer(text):
            ids += encode(text[pos : match.start()], add_special_tokens=add_special_tokens and not ids)
            ids += encode(self._spans[int(match.group(1))], add_special_tokens=False, parse_special=False)
            pos = match.end()
        ids += encode(text[pos:], add_special_tokens=False)
        return ids
