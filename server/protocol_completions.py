"""/v1/completions request, response and stream-chunk models (pydantic only)."""
from __future__ import annotations

import time
from typing import Annotated, Literal, Union

from pydantic import Field

from server.protocol import MAX_N, MAX_PROMPTS, ResponseModel, SamplingRequest, UsageInfo


PromptField = Union[str,
                    Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
                    Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                    Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                              Field(min_length=1, max_length=MAX_PROMPTS)]]


class CompletionRequest(SamplingRequest):
    prompt: PromptField
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    def unsupported_fields(self) -> list[str]:
        bad = []
        if self.best_of is not None and self.best_of != (self.n or 1):
            bad.append("best_of")
        if self.echo:
            bad.append("echo")
        if self.logprobs is not None:
            bad.append("logprobs")
        if self.suffix:
            bad.append("suffix")
        return bad



# ----- responses -----

class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: None = None
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


