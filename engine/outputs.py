"""What the engine hands back per step: plain dataclasses, deltas since the last output."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    """One sampled token's log-probability and its top alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top_logprobs: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class CompletionOutput:
    """One choice's progress since the previous RequestOutput of its request."""

    index: int
    text: str  # new text since the last output (never half a UTF-8 character)
    token_ids: list[int]  # new token ids since the last output
    num_tokens: int  # completion tokens generated so far in this choice
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    logprobs: list[TokenLogprob] | None = None  # one per new token when asked
    stop_reason: str | int | None = None  # the stop string or token id that ended it

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    """A step's news for one request: only the choices that changed are listed."""

    request_id: str
    outputs: list[CompletionOutput]
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    is_finished: bool = False  # every choice of the request has finished
    # with SamplingParams.prompt_logprobs: one entry per prompt token (the first is None, it has
    # nothing before it), in the request's first output only
    prompt_logprobs: list[TokenLogprob | None] | None = None
