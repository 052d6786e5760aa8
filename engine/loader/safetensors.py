"""Hugging Face folder (config.json + *.safetensors, maybe sharded) → ModelConfig + float32 tensors,
or with ``keep_quantized`` the float16/bfloat16 matrices as they are stored (F16/BF16 ``BlockTensor``)."""
from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file

from engine.layers.blocks import HALF_DTYPES, BlockTensor
from engine.loader.progress import progress
from engine.models.config import ModelConfig

# config.json "architectures" entry → our architecture name.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GPT2LMHeadModel": "gpt2",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}
# GPT-2's config.json names → the common ones (transformers' GPT2Config.attribute_map and more).
_GPT2_KEYS = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
              "n_positions": "max_position_embeddings", "layer_norm_epsilon": "rms_norm_eps",
              "n_inner": "intermediate_size", "activation_function": "hidden_act"}
# GPT-2's Conv1D weights, stored (in, out): transposed on load to Linear's (out, in), as GGUF has them.
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _as_id_list(value) -> list[int]:
    """eos_token_id may be an int, a list of ints or absent."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _sliding_fields(cfg: dict, arch: str) -> dict:
    """The sliding window (Mistral v0.1, Phi-3: every layer; Qwen2/3: where use_sliding_window
    says); Gemma 3's sliding-window layout, local rope base, score scale and soft-caps."""
    if arch not in ("gemma2", "gemma3"):
        window = cfg.get("sliding_window")
        if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window"):
            window = None
        if not window or arch not in ("mistral", "phi3", "qwen2", "qwen3"):
            return {}
        layer_types = cfg.get("layer_types")
        if arch in ("qwen2", "qwen3") and layer_types is None:
            first = int(cfg.get("max_window_layers", 0))
            layer_types = ["sliding_attention" if i >= first else "full_attention"
                           for i in range(int(cfg["num_hidden_layers"]))]
        return {"sliding_window": int(window), "layer_types": layer_types}
    num_layers = int(cfg["num_hidden_layers"])
    # older configs: every 6th layer global (Gemma 3), every other one (Gemma 2)
    pattern = int(cfg.get("sliding_window_pattern") or (6 if arch == "gemma3" else 2))
    layer_types = cfg.get("layer_types") or [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)
    ]
    local = (cfg.get("rope_parameters") or {}).get("sliding_attention") or {}
    # Gemma 3 configs carry attn_logit_softcapping, but neither transformers nor llama.cpp apply it
    # to Gemma 3 (q/k norms took its place); Gemma 2 does.
    optional = ("query_pre_attn_scalar", "final_logit_softcapping")
    if arch == "gemma2":
        optional += ("attn_logit_softcapping",)
    return {
        "sliding_window": int(cfg["sliding_window"]) if cfg.get("sliding_window") else None,
        "layer_types": list(layer_types),
        "rope_local_theta": float(local.get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0)
        if arch == "gemma3" else None,
        **{key: float(cfg[key]) for key in optional if cfg.get(key) is not None},
    }


def _longrope(rope_scaling: dict, cfg: dict) -> dict:
    """Phi-3's LongRoPE parameters, with the original context and attention factor filled in as
    transformers derives them (sqrt(1 + ln(factor) / ln(original)), factor = context / original)."""
    original = int(rope_scaling.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"])
    factor = rope_scaling.get("factor") or int(cfg.get("max_position_embeddings", original)) / original
    attention_factor = rope_scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {**rope_scaling, "rope_type": "longrope", "original_max_position_embeddings": original,
            "attention_factor": float(attention_factor)}


def read_hf_config(folder: str) -> ModelConfig:
    """ModelConfig from config.json (and generation_config.json for extra eos ids)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    names = cfg.get("architectures") or []
    arch = next((HF_ARCHITECTURES[n] for n in names if n in HF_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"unsupported architecture {names or cfg.get('model_type')!r}; "
            f"supported: {', '.join(HF_ARCHITECTURES)}"
        )
    if arch == "gpt2":
        cfg = {**cfg, **{new: cfg[old] for old, new in _GPT2_KEYS.items() if cfg.get(old) is not None}}
        cfg.setdefault("intermediate_size", 4 * cfg["hidden_size"])
    eos_ids = _as_id_list(cfg.get("eos_token_id"))
    gen_path = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            eos_ids += _as_id_list(json.load(f).get("eos_token_id"))
    hidden = int(cfg["hidden_size"])
    num_heads = int(cfg["num_attention_heads"])
    # transformers 5 moves rope_theta into rope_parameters; older files have it at top level.
    rope_params = cfg.get("rope_parameters") or {}
    rope_params = rope_params.get("full_attention", rope_params)  # Gemma 3: one set per layer kind
    rope_scaling = cfg.get("rope_scaling")
    if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
        rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) in ("longrope", "su"):
        rope_scaling = _longrope(rope_scaling, cfg)
    return ModelConfig(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=num_heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        hidden_act=cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu",
        rope_theta=float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
        rope_scaling=rope_scaling,
        partial_rotary_factor=float(cfg.get("partial_rotary_factor") or rope_params.get("partial_rotary_factor") or 1.0),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)),
        qk_norm=arch in ("qwen3", "gemma3"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=list(dict.fromkeys(eos_ids)),
        name=os.path.basename(os.path.normpath(folder)) or "model",
        **_sliding_fields(cfg, arch),
    )


def safetensors_files(folder: str) -> list[str]:
    """The shard files: from model.safetensors.index.json when present, else every *.safetensors."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {folder}")
    return [os.path.join(folder, f) for f in files]


def load_hf_folder(folder: str, keep_quantized: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor | BlockTensor]]:
    """Read a Hugging Face model folder: its ModelConfig and float32 tensors (HF names kept); with
    ``keep_quantized`` the float16/bfloat16 matrices stay in their dtype as F16/BF16 BlockTensors
    (what the C++ kernels compute on), the rest (norms, biases) float32."""
    config = read_hf_config(folder)
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(folder):
        file_tensors = load_file(path)
        for name, tensor in progress(file_tensors.items(), len(file_tensors), f"loading {os.path.basename(path)}"):
            if name.endswith("rotary_emb.inv_freq"):
                continue  # old checkpoints store the rotary table; the model recomputes it
            if config.architecture == "gpt2":
                if name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # old GPT-2 files store the causal mask as a buffer
                name = name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
                tensor = tensor.t() if name.endswith(_CONV1D_WEIGHTS) else tensor
            if keep_quantized and tensor.dim() == 2 and tensor.dtype in HALF_DTYPES.values():
                tensors[name] = BlockTensor.from_half(tensor)
            else:
                tensors[name] = tensor.float().contiguous() if tensor.is_floating_point() else tensor
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        # Some folders omit lm_head while config says untied; they are tied in practice.
        config.tie_word_embeddings = True
    return config, tensors
