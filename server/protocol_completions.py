"""/v1/completions request, response and stream-chunk models (pydantic only)."""
from __future__ import annotations

import time
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator

from engine import SamplingParams
from server.protocol import MAX_PROMPTS, ResponseModel, SamplingRequest, UsageInfo
from server.protocol_tools import GuidedFields

MAX_BEST_OF = 20  # OpenAI's own limit
MAX_COMPLETION_LOGPROBS = 5  # the spec's limit for the legacy endpoint

PromptField = Union[str,
                    Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
                    Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                    Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                              Field(min_length=1, max_length=MAX_PROMPTS)]]


class CompletionRequest(SamplingRequest, GuidedFields):
    prompt: PromptField
    # 0 with echo scores a prompt (its logprobs) without generating, as OpenAI allowed
    max_tokens: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1, le=MAX_BEST_OF)
    echo: bool | None = Field(False, validate_default=True)  # checked even when left out: max_tokens 0
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _max_tokens_0_needs_echo(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if info.data.get("max_tokens") == 0 and not value:
            raise ValueError("max_tokens 0 needs echo (the prompt is all there is to return)")
        return value

    @property
    def is_echo_only(self) -> bool:
        return self.max_tokens == 0

    def requested_max_tokens(self) -> int | None:
        return 1 if self.is_echo_only else self.max_tokens  # the engine runs one step, then it is dropped

    @property
    def num_choices(self) -> int:
        return self.n or 1

    @property
    def num_candidates(self) -> int:
        """Sequences generated per prompt: best_of of them, of which the best n are returned."""
        return max(self.best_of or 1, self.num_choices)

    def to_sampling_params(self, max_tokens: int | None = None) -> SamplingParams:
        params = super().to_sampling_params(max_tokens)
        params.n = self.num_candidates
        # best_of ranks candidates by their summed logprobs, so it needs them even if not shown
        params.logprobs = self.logprobs if self.logprobs is not None else (0 if params.n > self.num_choices else None)
        params.prompt_logprobs = self.logprobs if self.echo and self.logprobs is not None else None
        return params


# ----- responses -----

class CompletionLogprobs(ResponseModel):
    """Parallel lists, one entry per token. ``text_offset`` counts characters of the choice's
    returned text (the prompt included when echoed); an echoed prompt's first token has no
    logprob (nothing comes before it), so its entries are null, as OpenAI sends them."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(ResponseModel):
    """Both the full response and each stream chunk (the spec uses one shape for both)."""

    omit_if_none = frozenset({"usage"})
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


