"""Engine TokenLogprobs → the spec's two logprobs shapes.

Completions: parallel lists (tokens, token_logprobs, top_logprobs, text_offset). Chat: one
object per token (token, logprob, bytes, top_logprobs). A byte-level BPE token may hold part
of a UTF-8 character: its ``bytes`` are the real bytes, and its ``token`` string spells them
as OpenAI does, "bytes:\\xe2\\x80".
"""
from __future__ import annotations

import codecs
import math

from engine import TokenLogprob
from server import protocol_chat as pchat
from server import protocol_completions as pcomp

MIN_LOGPROB = -9999.0  # the spec's stand-in for "very unlikely" (JSON has no -Infinity)


def clamp(logprob: float) -> float:
    return logprob if math.isfinite(logprob) and logprob > MIN_LOGPROB else MIN_LOGPROB


class TokenStrings:
    """Token id → (string, bytes), cached: the same few thousand tokens recur."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self.tokenizer.token_bytes(token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            hit = self._cache[token_id] = (text, raw)
            if len(self._cache) > 65536:
                self._cache.clear()
        return hit


class CompletionLogprobsBuilder:
    """One choice's completions logprobs, built a piece at a time (each stream chunk gets its
    piece); ``text_offset`` keeps counting characters across pieces."""

    def __init__(self, strings: TokenStrings, num_top: int) -> None:
        self.strings = strings
        self.num_top = num_top
        self.num_chars = 0
        # characters complete so far; a token ending mid-character waits for the next one
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def copy(self) -> CompletionLogprobsBuilder:
        """A builder at the same point (the same character count, the same half character held)."""
        twin = CompletionLogprobsBuilder(self.strings, self.num_top)
        twin.num_chars = self.num_chars
        twin._utf8.setstate(self._utf8.getstate())
        return twin

    def piece(self, entries: list[TokenLogprob | None], token_ids: list[int] | None = None) -> pcomp.CompletionLogprobs:
        """``entries``: one per token; None for a token with no logprob (an echoed prompt's first),
        whose id then comes from ``token_ids``."""
        out = pcomp.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for i, entry in enumerate(entries):
            token_id = entry.token_id if entry is not None else token_ids[i]
            text, raw = self.strings(token_id)
            out.tokens.append(text)
            out.text_offset.append(self.num_chars)
            self.num_chars += len(self._utf8.decode(raw))
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(clamp(entry.logprob))
            # the spec: "the logprob of the sampled token is always returned", so up to k + 1
            top = dict(sorted(entry.top_logprobs.items(), key=lambda kv: -kv[1])[: self.num_top])
            top.setdefault(entry.token_id, entry.logprob)
            out.top_logprobs.append({self.strings(t)[0]: clamp(lp) for t, lp in top.items()})
        return out


def merge_completion_logprobs(pieces: list[pcomp.CompletionLogprobs]) -> pcomp.CompletionLogprobs:
    return pcomp.CompletionLogprobs(
        tokens=[t for p in pieces for t in p.tokens],
        token_logprobs=[t for p in pieces for t in p.token_logprobs],
        top_logprobs=[t for p in pieces for t in p.top_logprobs],
        text_offset=[t for p in pieces for t in p.text_offset])


def chat_logprobs(strings: TokenStrings, entries: list[TokenLogprob], num_top: int) -> list[pchat.ChatTokenLogprob]:
    out = []
    for entry in entries:
        text, raw = strings(entry.token_id)
        top = sorted(entry.top_logprobs.items(), key=lambda kv: -kv[1])[:num_top]
        out.append(pchat.ChatTokenLogprob(
            token=text, logprob=clamp(entry.logprob), bytes=list(raw),
            top_logprobs=[pchat.TopLogprob(token=strings(t)[0], logprob=clamp(lp), bytes=list(strings(t)[1]))
                          for t, lp in top]))
    return out
