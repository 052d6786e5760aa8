"""Chunks: one request's engine outputs accumulated into stream chunks and a full response.

Endpoint subclasses (serving_completions.CompletionChunks, serving_chat.ChatChunks) build
the shapes; this base keeps the per-choice text, finish reasons, token counts and logprobs.
"""
from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii

from engine import RequestOutput, TokenLogprob
from server import protocol as p
from server.errors import APIError
from server.serving_logprobs import TokenStrings

json_string = encode_basestring_ascii  # a str as JSON text: what json.dumps(str) writes, without its overhead


class Chunks:
    """Accumulates one request's outputs; builds its stream chunks and its full response.

    ``n``: sequences per prompt (choice ``i`` of prompt ``k`` is index ``k * n + i``).
    ``num_logprobs``: top alternatives to show per token; None = logprobs off.
    """

    def __init__(self, request_id: str, model: str, n: int, include_usage: bool,
                 strings: TokenStrings | None = None, num_logprobs: int | None = None) -> None:
        self.request_id, self.model, self.n, self.include_usage = request_id, model, n, include_usage
        self.strings, self.num_logprobs = strings, num_logprobs
        self.created = int(time.time())
        self.texts: dict[int, str] = {}
        self.finish_reasons: dict[int, str] = {}
        self.num_tokens: dict[int, int] = {}
        self.num_prompt_tokens: dict[int, int] = {}
        self.num_cached_tokens: dict[int, int] = {}
        self.cumulative_logprobs: dict[int, float] = {}
        self._heads: dict[str, str] = {}

    def chunk_head(self, object: str) -> str:
        """A stream chunk's JSON text up to its choices' opening bracket: what ``json.dumps`` of
        the model_dump of a chunk (id, object, created, model, choices, …) starts with. The
        per-token chunks are written as text from here, without pydantic (the hot path)."""
        head = self._heads.get(object)
        if head is None:
            whole = json.dumps({"id": self.request_id, "object": object, "created": self.created,
                                "model": self.model, "choices": []})
            head = self._heads[object] = whole[: -len("]}")]
        return head

    def update(self, k: int, out: RequestOutput) -> list[dict | str]:
        """Record one engine output of prompt ``k``; return the stream chunks it makes (dicts,
        or their JSON text)."""
        chunks = [] if k in self.num_prompt_tokens else self.prompt_started(k, out)
        self.num_prompt_tokens[k] = out.num_prompt_tokens
        self.num_cached_tokens[k] = out.num_cached_tokens
        for choice in out.outputs:
            index = k * self.n + choice.index
            if index in self.finish_reasons:
                continue  # exactly one finish_reason per choice, whatever the engine repeats
            text = choice.text
            if choice.logprobs:
                entries = list(choice.logprobs)
                self.cumulative_logprobs[index] = (self.cumulative_logprobs.get(index, 0.0)
                                                   + sum(e.logprob for e in entries))
                if choice.finish_reason == "stop" and not isinstance(choice.stop_reason, str):
                    entries.pop()  # the end-of-turn or stop token: it adds no text, so no logprob shown
            else:
                entries = []
            texts = self.texts
            texts[index] = texts[index] + text if index in texts else text
            self.num_tokens[index] = choice.num_tokens
            if text or (entries and self.num_logprobs is not None):
                chunks.append(self.text_chunk(index, text, entries))
            if choice.finish_reason == "abort":
                raise APIError(503, "The engine aborted the request before it finished.")
            if choice.finish_reason is not None:
                self.finish_reasons[index] = choice.finish_reason
                chunks.append(self.finish_chunk(index, choice.finish_reason))
        return chunks

    def usage(self) -> p.UsageInfo:
        num_prompt = sum(self.num_prompt_tokens.values())
        num_completion = sum(self.num_tokens.values())
        num_cached = sum(self.num_cached_tokens.values())
        return p.UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_completion,
                           total_tokens=num_prompt + num_completion,
                           prompt_tokens_details=p.PromptTokensDetails(cached_tokens=num_cached))

    def is_heavy(self, k: int, out: RequestOutput) -> bool:
        """This update builds a prompt's logprobs (echo): thousands of entries, for a worker thread."""
        return out.prompt_logprobs is not None and k not in self.num_prompt_tokens

    def prompt_started(self, k: int, out: RequestOutput) -> list[dict]:
        """The first output of prompt ``k`` arrived (completions' echo goes out here)."""
        return []

    def start(self) -> list[dict]:
        return []

    def end(self) -> list[dict]:
        return [self.usage_chunk()] if self.include_usage else []

    def indices(self) -> list[int]:
        return sorted(self.texts)

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> dict | str:
        raise NotImplementedError

    def finish_chunk(self, index: int, reason: str) -> dict:
        raise NotImplementedError

    def usage_chunk(self) -> dict:
        raise NotImplementedError

    def full_response(self) -> dict:
        raise NotImplementedError
