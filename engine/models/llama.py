"""The Llama family: Llama 2/3, SmolLM2, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms), Phi-3
(q/k/v and gate/up already fused in the checkpoint, LongRoPE, partial rotary).

RMSNorm, rotary embeddings, grouped-query attention over the paged cache, SwiGLU, tied or
untied output embedding. Q/K/V and gate/up projections are fused into one matrix each.
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
from engine.models.weights import WeightCopier, tie_output


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = self.head_dim**-0.5
        self.window = cfg.layer_window(layer)  # Mistral v0.1, Phi-3: a sliding window
        self.has_qk_norm = cfg.qk_norm
        if cfg.qk_norm:  # Qwen3: one RMSNorm over head_dim, shared by every head
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, rope, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        # x (T, hidden)
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (T, Hq, D)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.has_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, k, rope)
        out = paged_attention(q, k, v, kv_cache, meta, self.scale, window=self.window)
        return self.o_proj(out.reshape(-1, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, rope, kv_cache, meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_position: int) -> None:
        super().__init__()
        self.config = cfg
        self.max_position = max_position
        self.reset_rotary(None)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head = tie_output(self.embed_tokens, self.lm_head)

    def reset_rotary(self, device: torch.device | None) -> None:
        """(Re)build the float32 cos/sin tables on ``device`` (after meta init or a dtype cast)."""
        cfg = self.config
        rotary_dim = int(cfg.head_dim * cfg.partial_rotary_factor)
        self.rotary = RotaryEmbedding(cfg.head_dim, self.max_position, cfg.rope_theta, cfg.rope_scaling, rotary_dim)
        if device is not None:
            self.rotary.to(device)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)  # (T, hidden)

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions (T,); kv_caches (L, 2, num_blocks, block_size, Hkv, D) -> hidden (T, hidden)."""
        x = self.embed(input_ids, positions)
        rope = self.rotary(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, rope, kv_cache, meta)
        return self.norm(x)

    def cpu_stack_spec(self) -> StackSpec:
        """The decoder layers as engine/layers/cpu_stack.py fills the C++ stack with them."""
        return StackSpec([StackLayer(layer.input_layernorm, layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                     layer.post_attention_layernorm, layer.mlp.gate_up_proj, layer.mlp.down_proj,
                                     self.rotary, layer.self_attn.window,
                                     q_norm=getattr(layer.self_attn, "q_norm", None),
                                     k_norm=getattr(layer.self_attn, "k_norm", None))
                          for layer in self.layers], attn_scale=self.layers[0].self_attn.scale, embed=self.embed,
                         final_norm=self.norm)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # (N, vocab)

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor | BlockTensor]) -> None:
        """Take Hugging Face-named tensors in, fusing q/k/v and gate/up; fail on anything missing.

        The model may live on the meta device: each parameter is replaced by the loaded tensor
        itself (no copy, no float32 allocation first). A ``BlockTensor`` replaces its Linear or
        Embedding with the block-format layer (engine/layers/blocks.py)."""
        cfg = self.config
        copier = WeightCopier(self, weights)
        take, put = copier.take, copier.put
        put("embed_tokens.weight", take("model.embed_tokens.weight"))
        put("norm.weight", take("model.norm.weight"))
        if not cfg.tie_word_embeddings:
            put("lm_head.weight", take("lm_head.weight"))
        for i in range(cfg.num_hidden_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            put(dst + "input_layernorm.weight", take(src + "input_layernorm.weight"))
            put(dst + "post_attention_layernorm.weight", take(src + "post_attention_layernorm.weight"))
            if src + "self_attn.qkv_proj.weight" in weights:  # Phi-3 ships them fused
                put(dst + "self_attn.qkv_proj.weight", take(src + "self_attn.qkv_proj.weight"))
            else:
                qkv = [take(f"{src}self_attn.{p}_proj.weight") for p in "qkv"]
                put(dst + "self_attn.qkv_proj.weight", stack_rows(qkv))
            if cfg.attention_bias:
                put(dst + "self_attn.qkv_proj.bias", torch.cat([take(f"{src}self_attn.{p}_proj.bias") for p in "qkv"]))
            put(dst + "self_attn.o_proj.weight", take(src + "self_attn.o_proj.weight"))
            if cfg.qk_norm:
                put(dst + "self_attn.q_norm.weight", take(src + "self_attn.q_norm.weight"))
                put(dst + "self_attn.k_norm.weight", take(src + "self_attn.k_norm.weight"))
            if src + "mlp.gate_up_proj.weight" in weights:
                put(dst + "mlp.gate_up_proj.weight", take(src + "mlp.gate_up_proj.weight"))
            else:
                gate_up = [take(f"{src}mlp.{p}_proj.weight") for p in ("gate", "up")]
                put(dst + "mlp.gate_up_proj.weight", stack_rows(gate_up))
            put(dst + "mlp.down_proj.weight", take(src + "mlp.down_proj.weight"))
        copier.check_all_used()
        self.tie_weights()
