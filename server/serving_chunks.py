"""Chunks: one request's engine outputs accumulated into stream chunks and a full response.

Endpoint subclasses (serving_completions.CompletionChunks, serving_chat.ChatChunks) build
the shapes; this base keeps the per-choice text, finish reasons and token counts.
"""
from __future__ import annotations

import time

from engine import RequestOutput
from server import protocol as p
from server.errors import APIError


class Chunks:
    """Accumulates one request's outputs; builds its stream chunks and its full response."""

    def __init__(self, request_id: str, model: str, n: int, include_usage: bool) -> None:
        self.request_id, self.model, self.n, self.include_usage = request_id, model, n, include_usage
        self.created = int(time.time())
        self.texts: dict[int, str] = {}
        self.finish_reasons: dict[int, str] = {}
        self.num_tokens: dict[int, int] = {}
        self.num_prompt_tokens: dict[int, int] = {}
        self.num_cached_tokens: dict[int, int] = {}

    def update(self, k: int, out: RequestOutput) -> list[dict]:
        """Record one engine output of prompt ``k``; return the stream chunks it makes."""
        self.num_prompt_tokens[k] = out.num_prompt_tokens
        self.num_cached_tokens[k] = out.num_cached_tokens
        chunks = []
        for choice in out.outputs:
            index = k * self.n + choice.index
            if index in self.finish_reasons:
                continue  # exactly one finish_reason per choice, whatever the engine repeats
            self.texts[index] = self.texts.get(index, "") + choice.text
            self.num_tokens[index] = choice.num_tokens
            if choice.text:
                chunks.append(self.text_chunk(index, choice.text))
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
        details = p.PromptTokensDetails(cached_tokens=num_cached) if num_cached else None
        return p.UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_completion,
                           total_tokens=num_prompt + num_completion, prompt_tokens_details=details)

    def start(self) -> list[dict]:
        return []

    def end(self) -> list[dict]:
        return [self.usage_chunk()] if self.include_usage else []

    def indices(self) -> list[int]:
        return sorted(self.texts)

    def text_chunk(self, index: int, text: str) -> dict:
        raise NotImplementedError

    def finish_chunk(self, index: int, reason: str) -> dict:
        raise NotImplementedError

    def usage_chunk(self) -> dict:
        raise NotImplementedError

    def full_response(self) -> dict:
        raise NotImplementedError
