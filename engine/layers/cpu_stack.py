"""The decoder layers in C++ (engine/csrc/llama_cpu.cpp's LlamaStack): a model describes its layers
(``cpu_stack_spec()``: its own modules by role, and what its family changes), this fills the stack
with their weights, and the C++ attention backend (engine/layers/attention_backend.py) runs it in
place of the model's Python layers.

One stack serves every family: Llama, Mistral, Qwen2/3, Phi-3 (partial rotary, sliding windows),
Gemma 2/3 (norms on the block outputs, GeGLU, soft-capped scores, per-layer windows and rope
bases) and GPT-2 (LayerNorm, GELU, biases, no rotation). Position embeddings, the embedding
scale, the final norm and the logits stay in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata
from engine.layers.cpu_kernels import enabled_by_env, load
from engine.layers.rotary import RotaryEmbedding


@dataclass
class StackLayer:
    """One decoder layer as the C++ stack computes it: a model's own modules, by their role."""

    attn_norm: nn.Module  # before the attention: an RMSNorm (its weight) or an nn.LayerNorm (weight, bias)
    qkv: nn.Module  # nn.Linear, PerTokenInt8Linear or BlockLinear; q, k and v stacked by rows
    o: nn.Module
    mlp_norm: nn.Module  # before the MLP
    up: nn.Module  # gate and up stacked by rows (a gated MLP), or up alone
    down: nn.Module
    rotary: RotaryEmbedding | None  # its tables (partial rotary: narrower than a head); None: no rotation
    window: int | None = None  # attend to the last `window` positions only
    q_norm: nn.Module | None = None  # per-head RMSNorms of q and k (Qwen3, Gemma 3)
    k_norm: nn.Module | None = None
    attn_out_norm: nn.Module | None = None  # Gemma: norms on the attention's and the MLP's outputs
    mlp_out_norm: nn.Module | None = None


@dataclass
class StackSpec:
    """A model's decoder layers and what its family changes in them (engine/csrc/llama_cpu.cpp's Options)."""

    layers: list[StackLayer]
    attn_scale: float  # of the scores
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the model's: (ids, positions) -> (T, hidden)
    final_norm: nn.Module  # after the last layer
    softcap: float | None = None  # scores -> softcap · tanh(scores / softcap) (Gemma 2)
    layer_norm: bool = False  # LayerNorm with a bias (GPT-2), else RMSNorm
    gelu: bool = False  # tanh GELU (GPT-2, Gemma), else SiLU


class CpuStack:
    """A model's forward with its decoder layers in C++: called with what the model takes, returns
    the hidden states after its final norm (the embedding and that norm stay the model's)."""

    def __init__(self, stack, spec: StackSpec) -> None:
        self.stack = stack
        self.embed = spec.embed
        self.final_norm = spec.final_norm

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions (T,) -> (T, hidden)."""
        empty = torch.empty(0, 0, dtype=torch.long)
        tables = meta.decode_block_tables if meta.num_decode_tokens else empty
        lens = meta.decode_context_lens if meta.num_decode_tokens else empty
        prefills = [[start, num_new, num_context] for start, num_new, num_context, _ in meta.prefills]
        x = self.stack.forward(self.embed(input_ids, positions), positions, kv_caches, meta.slot_mapping,
                               meta.num_decode_tokens, tables, lens, prefills, [table for *_, table in meta.prefills])
        return self.final_norm(x)


def build_cpu_stack(model) -> CpuStack | None:
    """``model``'s decoder layers in C++ (float32, int8 or GGUF block-format linears), or None when
    the kernels are unavailable or the model is not a float32 CPU model whose family describes its
    layers (``cpu_stack_spec()``)."""
    from engine.layers.blocks import BlockLinear
    from engine.layers.quant import PerTokenInt8Linear

    if not enabled_by_env():
        return None
    spec = model.cpu_stack_spec()
    if spec is None:
        return None
    first = spec.layers[0].attn_norm.weight  # (the embedding may be block-format: engine/layers/blocks.py)
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return None
    mod = load()
    if mod is None:
        return None

    def linear(layer):
        if isinstance(layer, PerTokenInt8Linear):
            return layer.qlinear._packed_params._packed_params, layer.bias
        if isinstance(layer, BlockLinear):
            return layer.kernel_args(), layer.bias
        return layer.weight.detach(), (layer.bias.detach() if layer.bias is not None else None)

    def norm(layer):
        if layer is None:
            return None
        if isinstance(layer, nn.LayerNorm):
            return layer.weight.detach(), layer.bias.detach()
        return layer.weight.detach()

    options = mod.StackOptions()
    cfg = model.config
    options.layer_norm, options.gelu, options.gated = spec.layer_norm, spec.gelu, cfg.mlp_gated
    options.attn_scale, options.softcap = spec.attn_scale, spec.softcap or 0.0
    no_rotation = torch.zeros(1, 0)
    stack = mod.LlamaStack(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                           cfg.intermediate_size, float(cfg.rms_norm_eps), no_rotation, no_rotation, options)
    for layer in spec.layers:
        cos, sin = (layer.rotary.cos, layer.rotary.sin) if layer.rotary is not None else (no_rotation, no_rotation)
        stack.add_layer(norm(layer.attn_norm), linear(layer.qkv), linear(layer.o), norm(layer.mlp_norm),
                        linear(layer.up), linear(layer.down), q_norm=norm(layer.q_norm), k_norm=norm(layer.k_norm),
                        attn_out_norm=norm(layer.attn_out_norm), mlp_out_norm=norm(layer.mlp_out_norm),
                        cos=cos, sin=sin, window=layer.window or 0)
    return CpuStack(stack, spec)
