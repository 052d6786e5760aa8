"""Attention over the paged KV cache.

A step's tokens are laid out flat: first the decode sequences (one token each), then the
prefill chunks. New keys and values are written into their cache slots; decodes attend
together over their gathered block tables, each prefill chunk on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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

    def finalize(self, block_size: int, device: torch.device) -> "AttentionMetadata":
        """Precompute what does not change from layer to layer (masks, flat block ids)."""
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


def paged_attention(
    q: torch.Tensor,  # (T, Hq, D)
    k: torch.Tensor,  # (T, Hkv, D)
    v: torch.Tensor,  # (T, Hkv, D)
    kv_cache: torch.Tensor,  # (2, num_blocks, block_size, Hkv, D)
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))
    out = torch.empty_like(q)

    num_decode = meta.num_decode_tokens
    if num_decode:
        length = meta.decode_mask.shape[-1]
        # (B * max_blocks, block_size, Hkv, D) -> (B, Hkv, L, D); index_select is a plain row copy
        keys = k_cache.index_select(0, meta.decode_block_ids).view(num_decode, length, num_kv_heads, head_dim)
        values = v_cache.index_select(0, meta.decode_block_ids).view(num_decode, length, num_kv_heads, head_dim)
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # no-ops unless the cache is float16
        query = q[:num_decode].unsqueeze(2)  # (B, Hq, 1, D)
        attn = F.scaled_dot_product_attention(query, keys.transpose(1, 2), values.transpose(1, 2),
                                              attn_mask=meta.decode_mask, scale=scale, enable_gqa=True)
        out[:num_decode] = attn.squeeze(2)

    for (start, num_new, num_context, table), mask in zip(meta.prefills, meta.prefill_masks):
        query = q[start : start + num_new].transpose(0, 1)  # (Hq, n, D)
        if mask is None:  # nothing cached before this chunk: attend to the new keys
            keys = k[start : start + num_new].transpose(0, 1)
            values = v[start : start + num_new].transpose(0, 1)
            attn = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale, enable_gqa=True)
        else:
            keys = k_cache.index_select(0, table).view(-1, num_kv_heads, head_dim)[:num_context].transpose(0, 1)
            values = v_cache.index_select(0, table).view(-1, num_kv_heads, head_dim)[:num_context].transpose(0, 1)
            keys, values = keys.to(q.dtype), values.to(q.dtype)
            attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start : start + num_new] = attn.transpose(0, 1)
    return out
