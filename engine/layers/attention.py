"""Attention over the paged KV cache.

A step's tokens are laid out flat: first the decode sequences (one token each), then the
prefill chunks (``decodes_first``). ``AttentionMetadata.build`` turns the step's rows (where each
sequence starts, how many tokens, its block table) into cache slots, decode tables and prefill
chunks; the attention backend (engine/layers/attention_backend.py) builds it and adds what its
layers need. New keys and values are written into their cache slots; decodes attend together
over their gathered block tables, each prefill chunk on its own.

A sliding-window layer (Gemma 3, Mistral) sees only the last ``window`` positions: its decodes
and its prefill chunks gather just the blocks that hold them (the blocks before are skipped,
however long the sequence), and its masks leave out the keys that fell out of the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AttentionRow:
    """One sequence's share of a step: positions ``start .. start + num_new - 1`` are computed,
    their keys and values written into the blocks of ``block_table``."""

    start: int
    num_new: int
    block_table: list[int]


def decodes_first(num_new_tokens: list[int]) -> list[int]:
    """The order a step's rows are laid out in: decodes (one token each) first, then prefill chunks."""
    return sorted(range(len(num_new_tokens)), key=lambda i: num_new_tokens[i] != 1)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) flat cache slot of each new token
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    decode_block_tables: torch.Tensor | None  # (B, max_blocks): only the blocks in use, padded with 0
    decode_context_lens: torch.Tensor | None  # (B,)
    decode_max_context_len: int
    prefills: list[tuple[int, int, int, torch.Tensor]]  # (start, num_new, num_context, block table)
    # built once per step by finalize(), used by every layer
    decode_block_ids: torch.Tensor | None = None  # (B * max_blocks,) flattened decode_block_tables
    decode_mask: torch.Tensor | None = None  # (B, 1, 1, max_blocks * block_size): True = attend
    prefill_masks: list[torch.Tensor | None] | None = None  # per prefill: (num_new, num_context) or None
    block_size: int = 0
    windows: dict[int, "WindowView"] = field(default_factory=dict)  # sliding window → its view, built once

    @classmethod
    def build(cls, rows: list[AttentionRow], block_size: int, device: torch.device) -> AttentionMetadata:
        """A step's rows, laid out as ``decodes_first`` orders them → slots, decode tables (only
        the blocks in use, padded with 0) and prefill chunks; ``finalize`` adds the masks."""
        bs = block_size
        slots: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills = []
        flat_start = 0
        for row in rows:
            end = row.start + row.num_new
            table = row.block_table[: -(-end // bs)]
            slots.extend(table[p // bs] * bs + p % bs for p in range(row.start, end))
            if row.num_new == 1:
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                prefills.append((flat_start, row.num_new, end, torch.tensor(table, device=device)))
            flat_start += row.num_new
        meta = cls(slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
                   num_decode_tokens=len(decode_lens), decode_block_tables=None, decode_context_lens=None,
                   decode_max_context_len=max(decode_lens, default=0), prefills=prefills)
        if decode_lens:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            meta.decode_block_tables = torch.tensor(padded, dtype=torch.long, device=device)
            meta.decode_context_lens = torch.tensor(decode_lens, dtype=torch.long, device=device)
        return meta

    def finalize(self, block_size: int, device: torch.device) -> AttentionMetadata:
        """Precompute what does not change from layer to layer (masks, flat block ids)."""
        self.block_size = block_size
        if self.num_decode_tokens:
            max_blocks = -(-self.decode_max_context_len // block_size)
            tables = self.decode_block_tables[:, :max_blocks]
            self.decode_block_tables = tables
            self.decode_block_ids = tables.reshape(-1)
            positions = torch.arange(max_blocks * block_size, device=device)
            self.decode_mask = (positions[None, :] < self.decode_context_lens[:, None])[:, None, None, :]
        self.prefill_masks = []
        for _, num_new, num_context, _ in self.prefills:
            if num_context == num_new:
                self.prefill_masks.append(None)  # causal over the chunk's own keys
            else:
                q_pos = torch.arange(num_context - num_new, num_context, device=device)
                self.prefill_masks.append(torch.arange(num_context, device=device)[None, :] <= q_pos[:, None])
        return self

    def window_view(self, window: int) -> "WindowView":
        """Block ids and masks for a layer that attends to the last ``window`` positions only."""
        if window not in self.windows:
            self.windows[window] = WindowView.build(self, window)
        return self.windows[window]


@dataclass
class WindowView:
    decode_block_ids: torch.Tensor | None  # (B * num_window_blocks,): only the blocks the windows reach
    decode_mask: torch.Tensor | None  # (B, 1, 1, num_window_blocks * block_size)
    prefill_masks: list[torch.Tensor]  # per prefill: (num_new, num_context - first_block * block_size)
    prefill_first_blocks: list[int]  # per prefill: the first block of its table any query's window reaches

    @staticmethod
    def build(meta: AttentionMetadata, window: int) -> "WindowView":
        bs = meta.block_size
        block_ids = decode_mask = None
        if meta.num_decode_tokens:
            tables, lens = meta.decode_block_tables, meta.decode_context_lens  # (B, max_blocks), (B,)
            device = tables.device
            num_blocks = min(tables.shape[1], (window - 1) // bs + 2)  # a window spans at most this many
            first = ((lens - window).clamp(min=0) // bs).clamp(max=tables.shape[1] - num_blocks)  # (B,)
            index = first[:, None] + torch.arange(num_blocks, device=device)  # (B, num_blocks)
            block_ids = tables.gather(1, index).reshape(-1)
            key_pos = (index[:, :, None] * bs + torch.arange(bs, device=device)).reshape(len(lens), -1)
            decode_mask = ((key_pos < lens[:, None]) & (key_pos >= lens[:, None] - window))[:, None, None, :]
        prefill_masks, prefill_first_blocks = [], []
        for _, num_new, num_context, table in meta.prefills:
            first = 0 if num_context == num_new else max(0, num_context - num_new - window + 1) // bs
            q_pos = torch.arange(num_context - num_new, num_context, device=table.device)[:, None]
            k_pos = torch.arange(first * bs, num_context, device=table.device)[None, :]
            prefill_masks.append((k_pos <= q_pos) & (k_pos > q_pos - window))
            prefill_first_blocks.append(first)
        return WindowView(block_ids, decode_mask, prefill_masks, prefill_first_blocks)


def paged_attention(
    q: torch.Tensor,  # (T, Hq, D)
    k: torch.Tensor,  # (T, Hkv, D)
    v: torch.Tensor,  # (T, Hkv, D)
    kv_cache: torch.Tensor,  # (2, num_blocks, block_size, Hkv, D)
    meta: AttentionMetadata,
    scale: float,
    window: int | None = None,  # attend to the last `window` positions only
    softcap: float | None = None,  # scores → softcap · tanh(scores / softcap) before the softmax
) -> torch.Tensor:
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))
    out = torch.empty_like(q)
    decode_block_ids, decode_mask, prefill_masks = meta.decode_block_ids, meta.decode_mask, meta.prefill_masks
    first_blocks = [0] * len(meta.prefills)
    if window is not None:
        view = meta.window_view(window)
        decode_block_ids, decode_mask, prefill_masks = view.decode_block_ids, view.decode_mask, view.prefill_masks
        first_blocks = view.prefill_first_blocks

    num_decode = meta.num_decode_tokens
    if num_decode:
        length = decode_mask.shape[-1]
        # (B * max_blocks, block_size, Hkv, D) -> (B, Hkv, L, D); index_select is a plain row copy
        keys = k_cache.index_select(0, decode_block_ids).view(num_decode, length, num_kv_heads, head_dim)
        values = v_cache.index_select(0, decode_block_ids).view(num_decode, length, num_kv_heads, head_dim)
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # no-ops unless the cache is float16
        query = q[:num_decode].unsqueeze(2)  # (B, Hq, 1, D)
        attn = _attend(query, keys.transpose(1, 2), values.transpose(1, 2), decode_mask, scale, softcap)
        out[:num_decode] = attn.squeeze(2)

    for (start, num_new, num_context, table), mask, first in zip(meta.prefills, prefill_masks, first_blocks):
        query = q[start : start + num_new].transpose(0, 1)  # (Hq, n, D)
        if num_context == num_new:  # nothing cached before this chunk: attend to the new keys
            keys = k[start : start + num_new].transpose(0, 1)
            values = v[start : start + num_new].transpose(0, 1)
        else:
            table, num_keys = table[first:], num_context - first * block_size  # skip blocks before every window
            keys = k_cache.index_select(0, table).view(-1, num_kv_heads, head_dim)[:num_keys].transpose(0, 1)
            values = v_cache.index_select(0, table).view(-1, num_kv_heads, head_dim)[:num_keys].transpose(0, 1)
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        out[start : start + num_new] = _attend(query, keys, values, mask, scale, softcap).transpose(0, 1)
    return out


def _attend(query, keys, values, mask, scale: float, softcap: float | None) -> torch.Tensor:
    """Attention of query (..., Hq, n, D) over keys/values (..., Hkv, L, D); mask (..., n, L) with
    True = attend, or None for causal. Soft-capped scores need the explicit product."""
    if softcap is None:
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=mask is None,
                                              scale=scale, enable_gqa=True)
    group = query.shape[-3] // keys.shape[-3]
    keys, values = keys.repeat_interleave(group, dim=-3), values.repeat_interleave(group, dim=-3)
    scores = torch.tanh(query @ keys.transpose(-1, -2) * (scale / softcap)) * softcap  # (..., Hq, n, L)
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(query.dtype) @ values
