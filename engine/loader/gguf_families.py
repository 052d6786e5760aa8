"""What the GGUF reader needs to know per family beyond Llama: tensor names that differ, and the
hyper-parameters llama.cpp reads from the ``{arch}.*`` keys (or assumes) for Gemma 2/3 and Phi-3.

Names map to Hugging Face names, so one model's ``load_weights`` serves both file formats.
"""
from __future__ import annotations

# Gemma 2/3: four norms a layer (ffn_norm is the one before the MLP). llama.cpp's converter stores
# every Gemma norm weight w as 1 + w, which load_gguf undoes (Hugging Face keeps w).
GEMMA_ARCHITECTURES = ("gemma2", "gemma3")
GEMMA_LAYER_NAMES = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
# Phi-3: q/k/v fused, and ffn_up holds gate and up (gate first), as in the Hugging Face checkpoint.
PHI3_LAYER_NAMES = {
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "ffn_up.weight": "mlp.gate_up_proj.weight",
}
# Phi-3's LongRoPE factors, stored as tensors; read into ModelConfig.rope_scaling, not weights.
ROPE_FACTOR_TENSORS = {"rope_factors_short.weight": "short_factor", "rope_factors_long.weight": "long_factor"}
# GPT-2 (llama.cpp's converter already transposed the Conv1D weights to Linear layout).
GPT2_LAYER_NAMES = {
    f"{gguf}.{kind}": f"{hf}.{kind}"
    for gguf, hf in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                     ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
    for kind in ("weight", "bias")
}
GPT2_GLOBAL_NAMES = {
    "token_embd.weight": "transformer.wte.weight",
    "position_embd.weight": "transformer.wpe.weight",
    "output_norm.weight": "transformer.ln_f.weight",
    "output_norm.bias": "transformer.ln_f.bias",
    "output.weight": "lm_head.weight",
}
HIDDEN_ACTS = {"gpt2": "gelu_new", "gemma2": "gelu_pytorch_tanh", "gemma3": "gelu_pytorch_tanh"}  # else silu


def gemma_fields(md: dict, arch: str, num_layers: int, hidden: int, num_heads: int) -> dict:
    """Sliding layers, rope bases and score scale as llama.cpp reads a Gemma 3 file: every 6th
    layer global unless the file lists the pattern, local base 10000 unless it names one. Gemma 2:
    every other layer global, one rope base, soft-capped scores."""
    if arch not in GEMMA_ARCHITECTURES:
        return {}
    pattern = md.get(f"{arch}.attention.sliding_window_pattern", 6 if arch == "gemma3" else 2)
    if isinstance(pattern, list):  # one bool per layer, True = sliding
        layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        layer_types = ["full_attention" if (i + 1) % int(pattern) == 0 else "sliding_attention" for i in range(num_layers)]
    fields = {
        "sliding_window": md.get(f"{arch}.attention.sliding_window"),
        "layer_types": layer_types,
        "rope_local_theta": float(md.get(f"{arch}.rope.freq_base_swa", 10000.0)) if arch == "gemma3" else None,
        "final_logit_softcapping": md.get(f"{arch}.final_logit_softcapping"),
        "attn_logit_softcapping": md.get(f"{arch}.attn_logit_softcapping") if arch == "gemma2" else None,
    }
    if f"{arch}.attention.scale" in md:
        fields["query_pre_attn_scalar"] = float(md[f"{arch}.attention.scale"]) ** -2
    elif num_layers in (62, 46):  # llama.cpp: the 27B models scale by hidden / heads, the others by head_dim
        fields["query_pre_attn_scalar"] = hidden / num_heads
    return fields


def phi3_fields(md: dict, arch: str, head_dim: int, rope_factors: dict[str, list[float]]) -> dict:
    """Phi-3's LongRoPE (``rope_factors``: the rope_factors_* tensors), partial rotary, sliding window."""
    if arch != "phi3":
        return {}
    fields = {"partial_rotary_factor": int(md.get(f"{arch}.rope.dimension_count", head_dim)) / head_dim,
              "sliding_window": md.get(f"{arch}.attention.sliding_window") or None}
    if rope_factors:
        original = int(md[f"{arch}.rope.scaling.original_context_length"])
        fields["rope_scaling"] = {"rope_type": "longrope", "original_max_position_embeddings": original,
                                  "attention_factor": float(md.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
                                  **rope_factors}
    return fields
