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
    decode_block_tables: torch.Tensor | None  # (B, max_blocks), padded with 0
    decode_context_lens: torch.Tensor | None  # (B,)
    decode_max_context_len: int
    prefills: list[tuple[int, int, int, torch.Tensor]]  # (start, num_new, num_context, block table)


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
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    num_decode = meta.num_decode_tokens
    if num_decode:
        tables = meta.decode_block_tables
        max_blocks = -(-meta.decode_max_context_len // block_size)
        tables = tables[:, :max_blocks]
        length = max_blocks * block_size
        # (B, max_blocks, block_size, Hkv, D) -> (B, Hkv, L, D)
        keys = k_cache[tables].view(num_decode, length, num_kv_heads, head_dim).transpose(1, 2)
        values = v_cache[tables].view(num_decode, length, num_kv_heads, head_dim).transpose(1, 2)
        positions = torch.arange(length, device=q.device)
        mask = (positions[None, :] < meta.decode_context_lens[:, None])[:, None, None, :]  # (B, 1, 1, L)
        query = q[:num_decode].unsqueeze(2)  # (B, Hq, 1, D)
        attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        out[:num_decode] = attn.squeeze(2)

    for start, num_new, num_context, table in meta.prefills:
        query = q[start : start + num_new].transpose(0, 1)  # (Hq, n, D)
        if num_context == num_new:  # nothing cached before this chunk: attend to the new keys
            keys = k[start : start + num_new].transpose(0, 1)
            values = v[start : start + num_new].transpose(0, 1)
            attn = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale, enable_gqa=True)
        else:
            keys = k_cache[table].view(-1, num_kv_heads, head_dim)[:num_context].transpose(0, 1)
            values = v_cache[table].view(-1, num_kv_heads, head_dim)[:num_context].transpose(0, 1)
            q_pos = torch.arange(num_context - num_new, num_context, device=q.device)
            mask = torch.arange(num_context, device=q.device)[None, :] <= q_pos[:, None]  # (n, ctx)
            attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start : start + num_new] = attn.transpose(0, 1)
    return out
