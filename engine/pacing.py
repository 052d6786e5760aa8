"""How much prompt a step may prefill beside streams that are decoding.

A step's wall time is what every decoding stream waits between two tokens. Beside a long prompt's
1024-token chunk that is tens of decode steps on a CPU, so streams freeze while a long prompt
prefills. The pacer measures steps as they run (seconds of a decode-only step, seconds per unit
of prefill work) and sizes the prefill of a step that also decodes to take at most
``max_decode_slowdown - 1`` decode steps' time, so that step lasts at most ``max_decode_slowdown``
times a decode-only one. Steps with nobody decoding keep the whole token budget, so a prompt
alone prefills at full speed. Outputs never depend on it: chunking computes the same function.

Work is counted in prompt-token units weighted by position: a token at position p attends over
p keys, which costs ``p / context_scale`` of a token's linear-layer work (``context_scale`` is a
layer's linear multiply-adds per token over the attention's ``2 * q_dim`` per key; about 3,000
for SmolLM2-135M), so a chunk deep into a long prompt is shorter than one at its start.
"""
from __future__ import annotations

import math


def context_scale(hidden: int, intermediate: int, q_dim: int, kv_dim: int, gated: bool = True) -> float:
    """Positions per token of linear work: a layer's linear multiply-adds for one token over the
    attention's per key (q·k and p·v over q_dim)."""
    linear = hidden * (q_dim + 2 * kv_dim) + q_dim * hidden + (3 if gated else 2) * hidden * intermediate
    return linear / (2 * q_dim)


class StepPacer:
    ALPHA = 0.3  # weight of the newest step in the running averages

    def __init__(self, max_decode_slowdown: float, context_scale: float, min_chunk: int) -> None:
        self.max_decode_slowdown = max_decode_slowdown
        self.context_scale = context_scale
        self.min_chunk = min_chunk
        self.decode_seconds: float | None = None  # a decode-only step (running average)
        self.seconds_per_unit: float | None = None  # a unit of prefill work (running average)

    def token_cost(self, position: int) -> float:
        return 1.0 + position / self.context_scale

    def chunk_cost(self, start: int, num_tokens: int) -> float:
        """Work of prefilling positions start .. start + num_tokens - 1."""
        return num_tokens * self.token_cost(start + (num_tokens - 1) / 2)

    def chunk_tokens(self, start: int, allowance: float) -> int:
        """The most tokens from position ``start`` whose work fits in ``allowance`` (at least 0)."""
        # num_tokens * (1 + (start + (num_tokens - 1) / 2) / s) <= allowance, solved for num_tokens
        s, b = self.context_scale, 1.0 + (start - 0.5) / self.context_scale
        n = (-b + math.sqrt(b * b + 2.0 * allowance / s)) * s
        return max(0, int(n + 1e-9))

    def allowance(self) -> float | None:
        """Prefill work a step that also decodes may do; None until both averages are measured
        (or when pacing is off): the whole token budget."""
        if self.max_decode_slowdown <= 0 or self.decode_seconds is None or self.seconds_per_unit is None:
            return None
        return (self.max_decode_slowdown - 1.0) * self.decode_seconds / self.seconds_per_unit

    def observe(self, num_decodes: int, prefill_cost: float, seconds: float) -> None:
        """One step ran: ``num_decodes`` sequences decoded beside ``prefill_cost`` of prefill."""
        if prefill_cost == 0:
            if num_decodes:
                self.decode_seconds = self._average(self.decode_seconds, seconds)
            return
        # a step with decodes: the part beyond a decode-only step is the prefill's; alone, the
        # step's fixed cost counts as prefill (an overestimate only for small chunks: safe)
        base = self.decode_seconds if num_decodes and self.decode_seconds is not None else 0.0
        per_unit = max(seconds - base, 0.05 * seconds) / prefill_cost
        self.seconds_per_unit = self._average(self.seconds_per_unit, per_unit)

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.ALPHA * (new - old)
