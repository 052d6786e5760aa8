"""Gemma 3 (text) and Gemma 2: the Llama shape with Gemma's changes.

- sliding-window layers interleaved with global ones (``ModelConfig.layer_types``), each kind with
  its own rope base (``rope_local_theta`` for the sliding ones);
- RMSNorm over each q and k head, and four norms a layer: before and after attention, before and
  after the MLP; every Gemma RMSNorm multiplies by ``1 + w`` (we store ``1 + w`` at load);
- GeGLU (tanh GELU of the gate times up), the embedding scaled by √hidden, scores scaled by
  ``query_pre_attn_scalar ** -0.5``; soft-capped scores and logits where the config asks.

Gemma 2 is the same code without the q/k norms (``qk_norm`` False), with one rope base for every
layer, and with the attention scores soft-capped (transformers and llama.cpp apply that cap to
Gemma 2 only, though Gemma 3 configs carry it too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.attention import AttentionMetadata, paged_attention
from engine.layers.blocks import BlockTensor, stack_rows
from engine.layers.cpu_stack import StackLayer, StackSpec
from engine.layers.rotary import RotaryEmbedding, apply_rotary
from engine.models.config import ModelConfig
from engine.models.llama import RMSNorm
from engine.models.weights import WeightCopier, tie_output


class Gemma3Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.has_qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.scale = (cfg.query_pre_attn_scalar or self.head_dim) ** -0.5
        self.window = cfg.layer_window(layer)
        self.softcap = cfg.attn_logit_softcapping

    def forward(self, x, rope, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (T, Hq, D)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        if self.has_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, k, rope)
        out = paged_attention(q, k, v.view(-1, self.num_kv_heads, self.head_dim), kv_cache, meta, self.scale,
                              window=self.window, softcap=self.softcap)
        return self.o_proj(out.reshape(-1, self.q_size))


class Gemma3MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.is_sliding = cfg.layer_window(layer) is not None
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Gemma3Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Gemma3MLP(cfg)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, kv_cache, meta) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, kv_cache, meta))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_position: int) -> None:
        super().__init__()
        self.config = cfg
        self.max_position = max_position
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.reset_rotary(None)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head = tie_output(self.embed_tokens, self.lm_head)

    def reset_rotary(self, device: torch.device | None) -> None:
        """(Re)build the float32 cos/sin tables of both layer kinds on ``device``."""
        cfg = self.config
        self.rotary_global = RotaryEmbedding(cfg.head_dim, self.max_position, cfg.rope_theta, cfg.rope_scaling)
        self.rotary_local = RotaryEmbedding(cfg.head_dim, self.max_position, cfg.rope_local_theta or cfg.rope_theta,
                                            None)
        if device is not None:
            self.rotary_global.to(device)
            self.rotary_local.to(device)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)  # rounded to x's dtype, as in HF

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions (T,); kv_caches (L, 2, num_blocks, block_size, Hkv, D) -> hidden (T, hidden)."""
        x = self.embed(input_ids, positions)
        rope_global = self.rotary_global(positions, x.dtype)
        rope_local = self.rotary_local(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, rope_local if layer.is_sliding else rope_global, kv_cache, meta)
        return self.norm(x)

    def cpu_stack_spec(self) -> StackSpec:
        """The decoder layers as engine/layers/cpu_stack.py fills the C++ stack with them."""
        attn = self.layers[0].self_attn
        return StackSpec([StackLayer(layer.input_layernorm, layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                     layer.pre_feedforward_layernorm, layer.mlp.gate_up_proj, layer.mlp.down_proj,
                                     self.rotary_local if layer.is_sliding else self.rotary_global,
                                     layer.self_attn.window, q_norm=getattr(layer.self_attn, "q_norm", None),
                                     k_norm=getattr(layer.self_attn, "k_norm", None),
                                     attn_out_norm=layer.post_attention_layernorm,
                                     mlp_out_norm=layer.post_feedforward_layernorm)
                          for layer in self.layers], attn_scale=attn.scale, embed=self.embed, final_norm=self.norm,
                         softcap=attn.softcap, gelu=True)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()  # (N, vocab)
        cap = self.config.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor | BlockTensor]) -> None:
        """Copy Hugging Face-named tensors in: q/k/v and gate/up fused (stacked by rows when kept as
        GGUF blocks), every norm stored as ``1 + w``."""
        copier = WeightCopier(self, weights)
        copier.put("embed_tokens.weight", copier.take("model.embed_tokens.weight"))
        copier.put("norm.weight", 1.0 + copier.take("model.norm.weight"))
        if not self.config.tie_word_embeddings:
            copier.copy("lm_head.weight", "lm_head.weight")
        norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
        norms += ("self_attn.q_norm", "self_attn.k_norm") if self.config.qk_norm else ()
        for i in range(self.config.num_hidden_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            for norm in norms:
                copier.put(f"{dst}{norm}.weight", 1.0 + copier.take(f"{src}{norm}.weight"))
            copier.put(dst + "self_attn.qkv_proj.weight", stack_rows([copier.take(f"{src}self_attn.{p}_proj.weight")
                                                                      for p in "qkv"]))
            copier.copy(dst + "self_attn.o_proj.weight", src + "self_attn.o_proj.weight")
            copier.put(dst + "mlp.gate_up_proj.weight", stack_rows([copier.take(f"{src}mlp.{p}_proj.weight")
                                                                    for p in ("gate", "up")]))
            copier.copy(dst + "mlp.down_proj.weight", src + "mlp.down_proj.weight")
        copier.check_all_used()
        self.tie_weights()  # the loaded embedding is a new parameter
