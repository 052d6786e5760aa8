"""Per-request bounds on what one small request may make the server produce.

A request of a few kilobytes can ask for many sequences (prompts × n, best_of) and, with
``logprobs`` and ``echo``, for every token's top alternatives in every choice: without bounds a
24 KB request made a 160 MB body. Each bound is a 400 that names the limit and the setting, sent
before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import SamplingParams
from server.errors import bad_request

DEFAULT_MAX_LOGPROBS = 500_000  # about 12 MB of JSON
DEFAULT_GRAMMAR_CACHE_BYTES = 256 * 2**20


@dataclass
class RequestLimits:
    """``max_sequences``: prompts × candidates per request (None: no cap; the server sets it to
    --max-num-seqs, what the scheduler runs at once). ``max_logprobs``: logprob entries one
    response may hold (tokens × (top alternatives + 1), over every choice, the echoed prompt
    included). ``grammar_cache_bytes``: the compiled-grammar cache's budget (server/structured.py)."""

    max_sequences: int | None = None
    max_logprobs: int = DEFAULT_MAX_LOGPROBS
    grammar_cache_bytes: int = DEFAULT_GRAMMAR_CACHE_BYTES

    def check(self, prompts: list[list[int]], params: SamplingParams, max_model_len: int) -> None:
        num_sequences = len(prompts) * params.n
        if self.max_sequences is not None and num_sequences > self.max_sequences:
            raise bad_request(
                f"This request asks for {num_sequences} sequences ({len(prompts)} prompt(s) × {params.n} "
                f"choices or best_of candidates); the server runs at most {self.max_sequences} per request "
                f"(--max-sequences-per-request). Lower n, best_of or the number of prompts.",
                param="n", code="too_many_sequences")
        num_entries = self.num_logprob_entries(prompts, params, max_model_len)
        if num_entries > self.max_logprobs:
            what = "max_tokens" if params.max_tokens is not None else "max_tokens (omitted: the rest of the context)"
            raise bad_request(
                f"This request could return {num_entries} logprob entries (tokens × (logprobs + 1) over every "
                f"choice, the echoed prompt included); the limit is {self.max_logprobs} "
                f"(--max-logprobs-per-request). Lower {what}, n, logprobs, or leave out echo.",
                param="logprobs", code="too_many_logprobs")

    @staticmethod
    def num_logprob_entries(prompts: list[list[int]], params: SamplingParams, max_model_len: int) -> int:
        """The most logprob entries the response can hold."""
        total = 0
        for ids in prompts:
            if params.logprobs is not None:
                num_tokens = params.max_tokens if params.max_tokens is not None else max(1, max_model_len - len(ids))
                total += num_tokens * (params.logprobs + 1)
            if params.prompt_logprobs is not None:  # echo: the prompt's logprobs, in every choice
                total += len(ids) * (params.prompt_logprobs + 1)
        return total * params.n
