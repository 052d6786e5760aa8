"""One generation: its token ids, status, KV block table and counters."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from engine.detokenizer import IncrementalDetokenizer
    from engine.guided import Guide


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # no KV blocks (new, or preempted and to be recomputed)
    RUNNING = "running"  # holds KV blocks; mid-prefill or decoding
    FINISHED = "finished"


class Sequence:
    """One choice of one request. ``n > 1`` requests hold n of these."""

    def __init__(
        self,
        seq_id: int,
        request_id: str,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index  # the choice index in the response
        self.params = params
        self.max_tokens = max_tokens  # resolved: never None
        self.token_ids: list[int] = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # chain hashes of this sequence's full blocks
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.generator: torch.Generator | None = None  # per-choice RNG when a seed is given
        self.detokenizer: IncrementalDetokenizer | None = None
        self.children: list[Sequence] = []  # n > 1 siblings, forked when the prompt is done
        self.pending_text = ""  # detokenized text not yet reported
        self.num_emitted_tokens = 0  # completion tokens already reported to the caller
        self.pending_logprobs: list = []  # TokenLogprob of tokens not yet reported
        self.stop_token_set: set[int] = set()  # EOS and stop_token_ids that end this choice
        self.guide: Guide | None = None  # this choice's own grammar state (engine/guided.py)
        # prompt position q -> logprob of prompt token q + 1 (SamplingParams.prompt_logprobs);
        # the request's first choice collects them while its prompt is computed, None once reported
        self.prompt_logprobs: dict | None = {} if params.prompt_logprobs is not None and index == 0 else None

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Its prompt's logits must be computed, not taken from the prefix cache."""
        return self.prompt_logprobs is not None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id}#{self.index}, {self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens})"
        )
