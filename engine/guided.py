"""Guided decoding: the per-sequence grammar state the engine masks logits with.

The engine knows no grammar library. Whoever builds the request (the server) puts a ``Guide``
in ``SamplingParams.guide``; every choice of the request gets its own ``clone()`` at the
grammar's start. Each step, the sampler asks the guides of the sampling rows for their allowed
tokens as a packed bitmask (one bit per token id, 32 per int32 word, as xgrammar and llguidance
both write it), applies all rows at once on the device, and the engine ``accept``s the sampled
token. A guide that ``is_terminated`` finishes its choice with "stop".

A guide class may also offer ``fill_bitmasks(pairs, bitmask)`` (a classmethod taking
``[(guide, row), ...]``) to fill many rows in one call, e.g. on the library's thread pool.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Guide(Protocol):
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32, CPU, (B, ceil(V / 32)))."""

    def accept(self, token_id: int) -> bool:
        """Advance by the sampled token; False if the grammar rejects it."""

    def is_terminated(self) -> bool:
        """The grammar is complete (or failed): nothing more may be generated."""

    def clone(self) -> Guide:
        """An independent copy in the same state (n > 1: one per choice)."""


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class GuidedMasker:
    """Applies the guides of a batch's sampling rows to their logits, batched.

    Keeps one CPU bitmask buffer (grown as needed) so a step allocates nothing but the transfer.
    """

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._bitmask = torch.full((0, bitmask_words(vocab_size)), -1, dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32, device=device)

    def apply(self, logits: torch.Tensor, guides: list[Guide | None]) -> None:
        """Set disallowed tokens' logits to -inf in place; rows whose guide is None are untouched."""
        rows = [i for i, g in enumerate(guides) if g is not None]
        if not rows:
            return
        if self._bitmask.shape[0] < len(rows):
            self._bitmask = torch.full((len(rows), self._bitmask.shape[1]), -1, dtype=torch.int32)
        bitmask = self._bitmask[: len(rows)]
        bitmask.fill_(-1)
        by_class: dict[type, list[tuple[Guide, int]]] = {}
        for k, i in enumerate(rows):
            by_class.setdefault(type(guides[i]), []).append((guides[i], k))
        for cls, pairs in by_class.items():
            fill_many = getattr(cls, "fill_bitmasks", None)
            if fill_many is not None and len(pairs) > 1:
                fill_many(pairs, bitmask)
            else:
                for guide, k in pairs:
                    guide.fill_bitmask(bitmask, k)
        words = bitmask.to(self.device, non_blocking=True)  # (R, W)
        allowed = ((words.unsqueeze(-1) >> self._shifts) & 1).view(len(rows), -1)  # (R, W * 32)
        allowed = allowed[:, : logits.shape[-1]].bool()
        index = torch.tensor(rows, device=logits.device)
        # a row with nothing allowed (cannot happen with a sound grammar) keeps its logits
        # rather than becoming all -inf, which would sample garbage or NaN
        allowed |= ~allowed.any(dim=-1, keepdim=True)
        logits[index] = logits[index].masked_fill(~allowed, -float("inf"))
