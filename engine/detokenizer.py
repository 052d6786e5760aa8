"""Incremental detokenization with stop strings.

Each step decodes only a small window of recent tokens (vLLM / TGI's prefix_offset /
read_offset trick), so the cost per token does not grow with the output. Text that ends in
U+FFFD (a UTF-8 character split across tokens) is held until the character completes, and a
tail that could begin a stop string is held until it either completes the stop or cannot. A
sequence that ends (max_tokens, say) in the middle of a character drops the partial character
rather than emitting U+FFFD for it.
"""
from __future__ import annotations

import codecs
from collections.abc import Sequence

# How many prompt tokens seed the window, so the first output token decodes in context.
_PROMPT_CONTEXT_TOKENS = 5
# A decode window that has grown to this many tokens starts again at the last emitted text.
_MAX_WINDOW = 8


class IncrementalDetokenizer:
    """Turns generated token ids into safe-to-emit text deltas, one step at a time."""

    def __init__(
        self,
        tokenizer,
        prompt_ids: Sequence[int],
        *,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = tuple(s for s in stop if s)
        self._include_stop = include_stop_str_in_output
        # All ids (prompt tail + output); the window is ids[prefix_offset:], of which
        # ids[prefix_offset:read_offset] is already emitted (it is decoded only for context).
        self._ids: list[int] = list(prompt_ids)[-_PROMPT_CONTEXT_TOKENS:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text: str | None = None  # decode(ids[prefix_offset:read_offset]), once known
        self._pending = ""  # decoded text held back because it may start a stop string
        self._emitted: list[str] = []  # the text emitted so far, in pieces
        self._is_stopped = False

    @property
    def output_text(self) -> str:
        """All text emitted so far (deltas and flush)."""
        if len(self._emitted) > 1:
            self._emitted[:] = ["".join(self._emitted)]
        return self._emitted[0] if self._emitted else ""

    def step(self, new_token_ids: Sequence[int]) -> tuple[str, str | None]:
        """Add generated ids; return (text safe to emit now, the stop string matched or None)."""
        if self._is_stopped:
            return "", None
        self._ids.extend(new_token_ids)
        text = self._decode_window(is_final=False)
        if not self._stop:  # nothing to hold back
            if text:
                self._emitted.append(text)
            return text, None
        self._pending += text
        return self._release(is_final=False)

    def flush(self) -> str:
        """Text still held back when the sequence ends without a stop string."""
        if self._is_stopped:
            return ""
        self._pending += self._decode_window(is_final=True)
        delta, _ = self._release(is_final=True)
        return delta

    def _decode_window(self, *, is_final: bool) -> str:
        """New text of ids[read_offset:], decoded with ids[prefix_offset:read_offset] as context.

        The context's text is the previous window's text when the window only grew (its start
        stays put for up to _MAX_WINDOW tokens), so most steps decode once, not twice.
        """
        ids = self._ids
        read_offset = self._read_offset
        if read_offset >= len(ids):
            return ""
        decode, skip = self._tokenizer.decode, self._skip_special_tokens
        prefix_offset = self._prefix_offset
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._prefix_text = decode(ids[prefix_offset:read_offset], skip_special_tokens=skip)
        new_text = decode(ids[prefix_offset:], skip_special_tokens=skip)
        # A trailing U+FFFD means a multi-byte character is still incomplete: wait for more bytes.
        if not is_final and (len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd")):
            return ""
        if len(ids) - prefix_offset >= _MAX_WINDOW:
            # start the next window where this one's new text began: decode its context anew
            self._prefix_offset, self._prefix_text = read_offset, None
        else:
            self._prefix_text = new_text  # the next window's context: ids[prefix_offset:len(ids)]
        self._read_offset = len(ids)
        if is_final and new_text.endswith("\ufffd") and self._ends_mid_character(ids):
            new_text = new_text[:-1]  # the U+FFFD the decoder wrote for the unfinished character
        return new_text[len(prefix_text) :]

    def _ends_mid_character(self, ids: list[int]) -> bool:
        """The last tokens' bytes end with the start of a UTF-8 character, not a whole one."""
        token_bytes = getattr(self._tokenizer, "token_bytes", None)
        if token_bytes is None:
            return False
        # a character has at most 4 bytes and every token at least one
        tail = b"".join(token_bytes(i) for i in ids[-4:])
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(tail, final=False)
        return bool(decoder.getstate()[0])  # bytes it still waits on

    def _release(self, *, is_final: bool) -> tuple[str, str | None]:
        """Emit pending text up to a stop string, or up to a tail that may start one."""
        text = self._pending
        # The earliest stop wins; at the same position the shorter one completed first.
        hit = min(((text.find(s), len(s), s) for s in self._stop if s in text), default=None)
        if hit is not None:
            index, _, stop = hit
            delta = text[: index + len(stop)] if self._include_stop else text[:index]
            self._pending = ""
            self._is_stopped = True
            self._emitted.append(delta)
            return delta, stop
        keep = 0 if is_final else self._stop_prefix_length(text)
        delta = text[: len(text) - keep]
        self._pending = text[len(text) - keep :]
        self._emitted.append(delta)
        return delta, None

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
