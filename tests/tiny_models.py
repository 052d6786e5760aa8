"""Tiny random models for tests: a byte-level BPE tokenizer, HF folders and GGUF files.

Nothing is downloaded. The same seed gives the same weights in both formats, so a test can
check that a GGUF (F32) file and a Hugging Face folder load to identical tensors.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_VOCAB_SIZE = 512
_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model is trained to answer questions.
What is the capital of France? The capital of France is Paris. Paris is a city in Europe.
Hello, world! def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024
Streaming servers send text as it is generated, token by token, until a stop string appears.
She said: "I'm sure they'll come; we're ready, aren't we?" He replied, 'Yes, it's fine.'
Café, naïve, résumé. Tabs\tand\nnew lines, and    several spaces between words.
Models read tokens, compute attention over the keys and values, and predict the next token.
Every request carries sampling parameters: temperature, top_p, top_k, penalties and a seed.
The scheduler batches prefill and decode steps; blocks of the cache are shared by prefixes.
"""

_ARCH_CONFIG = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": None},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": False, "sliding_window": None},
}
# HF suffix → GGUF per-layer suffix.
_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def train_tiny_tokenizer():
    """A deterministic byte-level BPE ``tokenizers.Tokenizer`` (vocab 512, ChatML specials first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    return tok


def make_tiny_tokenizer_files(dir: str) -> str:
    """Write tokenizer.json + tokenizer_config.json (ChatML template, eos <|im_end|>) into ``dir``."""
    os.makedirs(dir, exist_ok=True)
    train_tiny_tokenizer().save(os.path.join(dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": 512,
    }
    with open(os.path.join(dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return dir


def hf_weights_from(
    *,
    arch: str = "llama",
    tie_word_embeddings: bool = False,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = TOKENIZER_VOCAB_SIZE,
) -> dict[str, torch.Tensor]:
    """Random float32 weights with Hugging Face names and torch Linear shapes (out, in)."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = hidden_size // num_heads

    def randn(*shape, std):
        return torch.randn(*shape, generator=gen) * std

    # Embedding/lm_head std 0.25 makes logits (std ≈ 0.25·√hidden) far from flat; linears ≈ 1/√in.
    w = {"model.embed_tokens.weight": randn(vocab_size, hidden_size, std=0.25)}
    lin = 0.6 / hidden_size**0.5
    for i in range(num_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + randn(hidden_size, std=0.1)
        w[p + "self_attn.q_proj.weight"] = randn(num_heads * head_dim, hidden_size, std=lin)
        w[p + "self_attn.k_proj.weight"] = randn(num_kv_heads * head_dim, hidden_size, std=lin)
        w[p + "self_attn.v_proj.weight"] = randn(num_kv_heads * head_dim, hidden_size, std=lin)
        if arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = randn(num_heads * head_dim, std=0.02)
            w[p + "self_attn.k_proj.bias"] = randn(num_kv_heads * head_dim, std=0.02)
            w[p + "self_attn.v_proj.bias"] = randn(num_kv_heads * head_dim, std=0.02)
        w[p + "self_attn.o_proj.weight"] = randn(hidden_size, num_heads * head_dim, std=lin)
        w[p + "post_attention_layernorm.weight"] = 1.0 + randn(hidden_size, std=0.1)
        w[p + "mlp.gate_proj.weight"] = randn(intermediate_size, hidden_size, std=lin)
        w[p + "mlp.up_proj.weight"] = randn(intermediate_size, hidden_size, std=lin)
        w[p + "mlp.down_proj.weight"] = randn(hidden_size, intermediate_size, std=0.6 / intermediate_size**0.5)
    w["model.norm.weight"] = 1.0 + randn(hidden_size, std=0.1)
    if not tie_word_embeddings:
        w["lm_head.weight"] = randn(vocab_size, hidden_size, std=0.25)
    return w


def write_tiny_hf_model(
    dir: str,
    *,
    arch: str = "llama",
    tie_word_embeddings: bool = False,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> str:
    """A Hugging Face folder (config.json, model.safetensors, tokenizer files); returns ``dir``.
    ``dtype`` is the checkpoint's (bfloat16, float16: the float32 weights rounded, as a real
    release stores them)."""
    from safetensors.torch import save_file

    make_tiny_tokenizer_files(dir)
    weights = hf_weights_from(
        arch=arch, tie_word_embeddings=tie_word_embeddings, seed=seed, num_layers=num_layers,
        hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
    )
    config = {
        **_ARCH_CONFIG[arch],
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    with open(os.path.join(dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, os.path.join(dir, "model.safetensors"))
    return dir


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight``."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[suffix]}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rows → interleaved-rotary rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant_blocks(num_values: int, qtype, rng: np.random.Generator) -> np.ndarray:
    """Valid random K-quant blocks as bytes (gguf can't quantize K-quants in Python): random codes,
    scales and mins; d and dmin such that the values are of a linear layer's size here (|w| < 0.1)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(num_values // block_size, type_size), dtype=np.uint8)
    # the largest code times the largest scale: 15 * 63 (Q4_K), 31 * 63 (Q5_K), 32 * 128 (Q6_K)
    largest = {GGMLQuantizationType.Q4_K: 945, GGMLQuantizationType.Q5_K: 1953, GGMLQuantizationType.Q6_K: 4096}
    scales = rng.uniform(0.2, 1.0, size=(blocks.shape[0], 2)) * 0.1 / largest[qtype]
    scales = scales.astype(np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.Q6_K:
        blocks[:, -2:] = scales[:, :2]  # d is the block's last 2 bytes
    else:
        blocks[:, :4] = scales  # d, dmin lead Q4_K / Q5_K blocks
    return blocks


def gguf_tensors_from(hf_weights: dict[str, torch.Tensor], *, arch: str, qtype: str, num_heads: int, num_kv_heads: int,
                      seed: int = 0, embed_qtype: str | None = None, qtype_overrides: dict[str, str] | None = None) -> dict:
    """GGUF name → (array as written, GGMLQuantizationType): permuted Q/K, quantized 2-D weights.

    1-D tensors stay F32, and so does a weight whose rows aren't whole blocks of ``qtype`` (as
    llama.cpp's quantizer falls back). K-quants are random valid blocks, not the weights.
    ``embed_qtype`` gives token_embd its own type (SmolLM2's file: Q8_0 embeddings, Q4_1 layers);
    ``qtype_overrides`` others by a part of their name (a Q4_K_M file: {"v_proj": "Q6_K", …}).
    """
    import gguf
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    rng = np.random.default_rng(seed)
    out = {}
    for name, tensor in hf_weights.items():
        is_embed = name == "model.embed_tokens.weight" and embed_qtype is not None
        override = next((t for part, t in (qtype_overrides or {}).items() if part in name), None)
        target = GGMLQuantizationType[embed_qtype if is_embed else override or qtype]
        array = tensor.numpy().astype(np.float32)
        if arch in ("llama", "mistral") and "q_proj" in name:
            array = permute_qk(array, num_heads)
        elif arch in ("llama", "mistral") and "k_proj" in name:
            array = permute_qk(array, num_kv_heads)
        block_size = GGML_QUANT_SIZES[target][0]
        if array.ndim == 1 or array.shape[-1] % block_size:
            out[gguf_name(name)] = (array, GGMLQuantizationType.F32)
        elif target.name in ("Q4_K", "Q5_K", "Q6_K"):
            blocks = random_kquant_blocks(array.size, target, rng)
            out[gguf_name(name)] = (blocks.reshape(array.shape[0], -1), target)
        else:
            out[gguf_name(name)] = (gguf.quants.quantize(array, target), target)
    return out


def add_tiny_tokenizer(writer) -> None:
    """The tiny byte-level BPE tokenizer and ChatML template as ``tokenizer.ggml.*`` metadata."""
    tok = json.loads(train_tiny_tokenizer().to_str())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


def write_tiny_gguf(
    path: str,
    *,
    arch: str = "llama",
    qtype: str = "F32",
    seed: int = 0,
    tie_word_embeddings: bool = False,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    embed_qtype: str | None = None,
    qtype_overrides: dict[str, str] | None = None,
) -> str:
    """The tiny model as a GGUF file (llama.cpp conventions, tokenizer metadata); returns ``path``."""
    import gguf

    gguf_arch = "llama" if arch == "mistral" else arch  # llama.cpp writes Mistral as llama
    weights = hf_weights_from(
        arch=arch, tie_word_embeddings=tie_word_embeddings, seed=seed, num_layers=num_layers,
        hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
    )
    writer = gguf.GGUFWriter(path, gguf_arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(num_layers)
    writer.add_context_length(max_position_embeddings)
    writer.add_embedding_length(hidden_size)
    writer.add_feed_forward_length(intermediate_size)
    writer.add_head_count(num_heads)
    writer.add_head_count_kv(num_kv_heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden_size // num_heads)
    add_tiny_tokenizer(writer)
    for name, (array, tensor_type) in gguf_tensors_from(
        weights, arch=arch, qtype=qtype, num_heads=num_heads, num_kv_heads=num_kv_heads, seed=seed,
        embed_qtype=embed_qtype, qtype_overrides=qtype_overrides,
    ).items():
        if tensor_type.name in ("F32", "F16"):
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, array, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
