"""Tiny random checkpoints of the families beyond Llama, written by Hugging Face transformers.

Each is built from the family's own transformers config class, its weights drawn at random (far
from the near-zero initialisation, so that logits differ clearly between tokens), and saved with
``save_pretrained`` as safetensors beside the tiny tokenizer of tests/tiny_models.py. Where gguf's
writer can express the family, :func:`write_family_gguf` writes the same weights as a GGUF file
with llama.cpp's converter conventions (tensor names from gguf's own name map).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from tests.tiny_models import CHATML_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_VOCAB_SIZE, make_tiny_tokenizer_files, train_tiny_tokenizer

_COMMON = dict(vocab_size=TOKENIZER_VOCAB_SIZE, bos_token_id=0, eos_token_id=2, pad_token_id=0)


def family_config(family: str):
    """The transformers config of the tiny ``family`` model."""
    import transformers

    if family == "qwen3":
        return transformers.Qwen3Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False, **_COMMON)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, activation_function="gelu_new",
                                       layer_norm_epsilon=1e-5, **_COMMON)
    if family == "gemma3":
        # three sliding layers of window 5 around one global one, logit soft-capping, a score scale
        # other than head_dim, different rope bases: every Gemma difference shows in the logits
        # (attn_logit_softcapping is set to show that it is ignored, as transformers does for Gemma 3)
        return transformers.Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
            query_pre_attn_scalar=24, attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **_COMMON)
    if family == "gemma2":
        return transformers.Gemma2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=5, query_pre_attn_scalar=24,
            attn_logit_softcapping=3.0, final_logit_softcapping=4.0, rope_parameters={"rope_type": "default",
            "rope_theta": 10000.0}, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **_COMMON)
    if family in ("phi3", "phi4mini"):
        # LongRoPE with distinct short factors (the test's positions stay below the original context);
        # "phi4mini": Phi-4-mini's partial rotary (3/4 of each head) and a sliding window of 6
        partial = 0.75 if family == "phi4mini" else 1.0
        num_factors = int(16 * partial) // 2
        return transformers.Phi3Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, original_max_position_embeddings=256, rms_norm_eps=1e-5,
            sliding_window=6 if family == "phi4mini" else None, tie_word_embeddings=False,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": partial,
                             "short_factor": [1.0 + 0.5 * i for i in range(num_factors)],
                             "long_factor": [2.0 + i for i in range(num_factors)]},
            **_COMMON)
    raise ValueError(family)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:  # norm weights (around 1, or 0 where the norm adds 1) and biases
            p.add_(noise * 0.1)
        elif p.shape[0] == TOKENIZER_VOCAB_SIZE or "wpe" in name:  # embeddings: logits far from flat
            p.copy_(noise * 0.25)
        else:
            p.copy_(noise * 0.6 / min(p.shape) ** 0.5)


def write_family_hf(dir: str, family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> str:
    """A Hugging Face folder for ``family`` (config.json, model.safetensors, tokenizer), its weights
    stored in ``dtype``; returns ``dir``."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(family_config(family), dtype=torch.float32)
    _randomize(model, seed)
    model.to(dtype).save_pretrained(dir, safe_serialization=True)
    make_tiny_tokenizer_files(dir)
    return dir


def write_family_gguf(path: str, hf_dir: str, family: str, qtype: str = "F32") -> str:
    """The weights of the HF folder ``hf_dir`` as a GGUF file, as llama.cpp's converter writes
    ``family``; returns ``path``. ``qtype`` (one gguf quantizes in Python: Q4_0, Q4_1, Q5_0, Q8_0 …)
    holds every 2-D weight, 1-D ones staying F32."""
    import gguf
    from safetensors.torch import load_file

    from tests.tiny_models import add_tiny_tokenizer

    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    arch = {"qwen3": gguf.MODEL_ARCH.QWEN3, "gpt2": gguf.MODEL_ARCH.GPT2, "gemma3": gguf.MODEL_ARCH.GEMMA3,
            "gemma2": gguf.MODEL_ARCH.GEMMA2,
            "phi3": gguf.MODEL_ARCH.PHI3, "phi4mini": gguf.MODEL_ARCH.PHI3}[family]
    weights = {name: t.float().numpy() for name, t in load_file(os.path.join(hf_dir, "model.safetensors")).items()}
    if family == "gpt2":
        cfg = {"num_hidden_layers": cfg["n_layer"], "max_position_embeddings": cfg["n_positions"],
               "hidden_size": cfg["n_embd"], "intermediate_size": cfg["n_inner"] or 4 * cfg["n_embd"],
               "num_attention_heads": cfg["n_head"], "layer_norm_eps": cfg["layer_norm_epsilon"]}
        for name in list(weights):  # convert_hf_to_gguf.py's GPT2Model: Conv1D → (out, in); output = wte
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                weights[name] = np.ascontiguousarray(weights[name].T)
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    if family in ("gemma2", "gemma3"):  # convert_hf_to_gguf.py's Gemma models: norms stored as 1 + w
        weights = {name: w + 1 if name.endswith("norm.weight") else w for name, w in weights.items()}
    num_layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch, num_layers)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(f"tiny-{family}")
    writer.add_block_count(num_layers)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    if family == "gpt2":
        writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    else:
        writer.add_head_count_kv(cfg["num_key_value_heads"])
        if "head_dim" in cfg:
            writer.add_key_length(cfg["head_dim"])
            writer.add_value_length(cfg["head_dim"])
        if family != "gemma3":
            writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
        writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if family == "gemma3":
        writer.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
        writer.add_rope_freq_base_swa(cfg["rope_parameters"]["sliding_attention"]["rope_theta"])
        writer.add_sliding_window(cfg["sliding_window"])
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        writer.add_attention_scale(cfg["query_pre_attn_scalar"] ** -0.5)
        writer.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if family == "gemma2":
        writer.add_sliding_window(cfg["sliding_window"])
        writer.add_attention_scale(cfg["query_pre_attn_scalar"] ** -0.5)
        writer.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if arch == gguf.MODEL_ARCH.PHI3:  # convert_hf_to_gguf.py's Phi3MiniModel
        rope = cfg["rope_parameters"]
        head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
        writer.add_rope_dimension_count(int(head_dim * rope["partial_rotary_factor"]))
        writer.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        factor = cfg["max_position_embeddings"] / cfg["original_max_position_embeddings"]
        writer.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(factor) / np.log(cfg["original_max_position_embeddings"]))))
        if cfg.get("sliding_window"):
            writer.add_sliding_window(cfg["sliding_window"])
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    add_tiny_tokenizer(writer)
    for name, array in weights.items():
        base, _, suffix = name.rpartition(".")
        gguf_name = f"{names.get_name(base)}.{suffix}"
        if array.ndim == 2 and qtype != "F32":
            target = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, target), raw_dtype=target)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
