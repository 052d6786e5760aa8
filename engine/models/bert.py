"""BERT encoder (BertModel: all-MiniLM-L6-v2, bge, e5 … sentence-embedding backbones).

Embeddings (word + absolute position + token type) → LayerNorm → N post-LN layers of
bidirectional self-attention and a GELU feed-forward. Returns the last hidden states; pooling
is the embedder's business. Weights keep Hugging Face names (``encoder.layer.{i}.attention.self.query.weight`` …).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")
# prefixes that task heads put before the encoder's own names
_PREFIXES = ("bert.", "model.")


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(_ACTIVATIONS)}")

    @classmethod
    def from_folder(cls, folder: str) -> BertConfig:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        names = cfg.get("architectures") or []
        if cfg.get("model_type") != "bert" and not any(n in BERT_ARCHITECTURES for n in names):
            raise ValueError(f"not a BERT model: architectures {names}, model_type {cfg.get('model_type')!r}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type {cfg['position_embedding_type']!r}")
        return cls(
            vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]), num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)), layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            hidden_act=cfg.get("hidden_act", "gelu"), pad_token_id=int(cfg.get("pad_token_id") or 0))


_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # the exact (erf) GELU, as BERT's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids (B, T); one segment, so every token type is 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # (B, T, hidden)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for proj in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, 1, T): keys to attend
        return out.transpose(1, 2).reshape(B, T, -1)


class BertLayer(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = BertSelfAttention(cfg)
        self.attention.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(self.act(self.intermediate.dense(x)), x)


class _Output(nn.Module):
    def __init__(self, in_size: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) int64, attention_mask (B, T) bool (False = padding) → (B, T, hidden)."""
        x = self.embeddings(input_ids)
        mask = attention_mask[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face tensors in; a missing one is an error, extras (pooler, MLM head) are ignored."""
        params = dict(self.named_parameters())
        found = set()
        for name, tensor in weights.items():
            for prefix in _PREFIXES:
                if name.startswith(prefix) and name[len(prefix):] in params:
                    name = name[len(prefix):]
            # very old checkpoints name LayerNorm parameters gamma / beta
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if name not in params:
                continue
            if params[name].shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model {tuple(params[name].shape)}")
            with torch.no_grad():
                params[name].copy_(tensor)
            found.add(name)
        missing = sorted(set(params) - found)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")


def load_bert_weights(folder: str) -> dict[str, torch.Tensor]:
    """model.safetensors (preferred), else pytorch_model.bin read with ``weights_only=True``:
    never a full unpickle, which could run code from an untrusted file."""
    from safetensors.torch import load_file

    from engine.loader.safetensors import safetensors_files

    if any(f.endswith(".safetensors") for f in os.listdir(folder)):
        weights: dict[str, torch.Tensor] = {}
        for path in safetensors_files(folder):
            weights.update(load_file(path))
        return weights
    path = os.path.join(folder, "pytorch_model.bin")
    if not os.path.isfile(path):
        raise ValueError(f"no *.safetensors or pytorch_model.bin in {folder}")
    return torch.load(path, map_location="cpu", weights_only=True)
