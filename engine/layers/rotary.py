"""Rotary position embeddings (Hugging Face "rotate half" layout), with linear, Llama 3 and
LongRoPE (Phi-3's "su"/"longrope") scaling, over the whole head or its first part (partial rotary).

LongRoPE divides the frequencies by short factors up to the original context length and by long
factors beyond it, per position (as vLLM does: a cached key keeps the rotation it was written
with), and scales cos and sin by the attention factor.
"""
from __future__ import annotations

import math

import torch


def _inv_freq(head_dim: int, theta: float, rope_scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not rope_scaling:
        return inv_freq
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / float(rope_scaling["factor"])
    if kind == "llama3":
        factor = float(rope_scaling["factor"])
        low = float(rope_scaling.get("low_freq_factor", 1.0))
        high = float(rope_scaling.get("high_freq_factor", 4.0))
        old_len = float(rope_scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3, longrope)")


def _longrope_freqs(dim: int, max_position: int, theta: float, rope_scaling: dict) -> torch.Tensor:
    """(max_position, dim / 2) angles: short factors below the original context, long ones from it."""
    base = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    positions = torch.arange(max_position, dtype=torch.float64)
    short = torch.outer(positions, base / torch.tensor(rope_scaling["short_factor"], dtype=torch.float64))
    long = torch.outer(positions, base / torch.tensor(rope_scaling["long_factor"], dtype=torch.float64))
    is_long = positions >= int(rope_scaling["original_max_position_embeddings"])
    return torch.where(is_long[:, None], long, short)


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, head_dim: int, max_position: int, theta: float, rope_scaling: dict | None,
                 rotary_dim: int | None = None) -> None:
        super().__init__()
        dim = rotary_dim or head_dim  # partial rotary: only the first rotary_dim of each head turn
        kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type"))
        scale = 1.0
        if kind in ("longrope", "su"):
            freqs = _longrope_freqs(dim, max_position, theta, rope_scaling)
            scale = float(rope_scaling.get("attention_factor") or 1.0)
        else:
            freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), _inv_freq(dim, theta, rope_scaling))
        # (max_position, dim): cos and sin, each half repeated for rotate_half
        self.register_buffer("cos", (torch.cat([freqs.cos(), freqs.cos()], -1) * scale).float(), persistent=False)
        self.register_buffer("sin", (torch.cat([freqs.sin(), freqs.sin()], -1) * scale).float(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for the step's positions (T,), each (T, 1, D), gathered once per step."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
    # q (T, Hq, D), k (T, Hkv, D); cos, sin (T, 1, R) with R <= D (partial rotary: the rest passes)
    cos, sin = rope
    rot = cos.shape[-1]
    if rot < q.shape[-1]:
        (q, q_pass), (k, k_pass) = q.split([rot, q.shape[-1] - rot], -1), k.split([rot, k.shape[-1] - rot], -1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        return torch.cat([q, q_pass], -1), torch.cat([k, k_pass], -1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
