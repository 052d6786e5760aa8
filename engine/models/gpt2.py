"""GPT-2: learned position embeddings, LayerNorm with bias, GELU, biases everywhere, tied output.

Weights arrive with Hugging Face GPT-2 names (``transformer.h.{i}.attn.c_attn.weight`` …) but in
torch Linear layout (out, in): the safetensors loader transposes HF's Conv1D matrices, and a GGUF
file already stores them that way (llama.cpp's converter transposes them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.attention import AttentionMetadata, paged_attention
from engine.layers.blocks import BlockTensor
from engine.layers.cpu_stack import StackLayer, StackSpec
from engine.models.config import ModelConfig
from engine.models.weights import WeightCopier, tie_output

# HF activation_function → torch; "gelu_new" (GPT-2's) is the tanh approximation.
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


class GPT2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.c_attn = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.c_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.scale = self.head_dim**-0.5

    def forward(self, x, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.c_attn(x).view(-1, 3, self.num_heads, self.head_dim).unbind(1)  # each (T, H, D)
        out = paged_attention(q, k, v, kv_cache, meta, self.scale)
        return self.c_proj(out.reshape(x.shape))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.c_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.approximate = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x, kv_cache, meta) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, meta)
        return x + self.mlp(self.ln_2(x))


class GPT2LMHeadModel(nn.Module):
    def __init__(self, cfg: ModelConfig, max_position: int) -> None:
        super().__init__()
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported GPT-2 activation {cfg.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head = tie_output(self.wte, self.lm_head)

    def reset_rotary(self, device: torch.device) -> None:
        """No rotary tables: positions are learned embeddings."""

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids) + self.wpe(positions)  # (T, hidden)

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions (T,); kv_caches (L, 2, num_blocks, block_size, H, D) -> hidden (T, hidden)."""
        x = self.embed(input_ids, positions)
        for block, kv_cache in zip(self.h, kv_caches):
            x = block(x, kv_cache, meta)
        return self.ln_f(x)

    def cpu_stack_spec(self) -> StackSpec | None:
        """The blocks as engine/layers/cpu_stack.py fills the C++ stack with them (no rotation)."""
        if self.h[0].mlp.approximate != "tanh":  # the stack's GELU is the tanh one
            return None
        return StackSpec([StackLayer(block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2, block.mlp.c_fc,
                                     block.mlp.c_proj, rotary=None) for block in self.h],
                         attn_scale=self.h[0].attn.scale, embed=self.embed, final_norm=self.ln_f, layer_norm=True,
                         gelu=True)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # (N, vocab)

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor | BlockTensor]) -> None:
        """Copy ``transformer.*``-named tensors in (Linear layout); fail on anything missing or left over.
        A weight kept as GGUF blocks turns its Linear (bias kept) or Embedding into the block-format layer."""
        copier = WeightCopier(self, weights)
        for name in [name for name, _ in self.named_parameters()]:  # (put swaps modules: list them first)
            if name == "lm_head.weight":
                if not self.config.tie_word_embeddings:
                    copier.copy(name, "lm_head.weight")
                continue
            copier.copy(name, "transformer." + name)
        copier.check_all_used()
        self.tie_weights()  # the loaded embedding is a new parameter
