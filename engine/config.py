"""EngineConfig: everything the engine needs to start, validated in __post_init__."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class EngineConfig:
    """How to build an engine. ``model=None`` means the built-in SmolLM2-135M-Instruct."""

    model: str | None = None  # a .gguf file or a Hugging Face folder
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # "auto": on CPU the weights' own formats (a GGUF file's Q4_0/Q4_1/Q8_0/F16/BF16, a Hugging Face
    # folder's float16/bfloat16 matrices: engine/layers/blocks.py) and float32 for the rest, bfloat16
    # on CUDA | float32 (everything dequantized: the reference) | bfloat16 | float16
    dtype: str = "auto"
    max_model_len: int | None = None  # default: the model's context length
    max_num_seqs: int = 64  # sequences decoded together at most
    max_num_batched_tokens: int = 1024  # tokens per step (prefill chunks + decodes)
    # a step that prefills beside decoding streams takes at most this many times a decode-only
    # step (engine/pacing.py); 0: prompts always take the whole token budget
    max_decode_slowdown: float = 2.0
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # default: from kv_cache_memory_gb
    kv_cache_memory_gb: float = 2.0  # size of the KV pool when num_kv_blocks is not given
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # torch intra-op threads on CPU; default: all cores
    seed: int = 0
    chat_template: str | None = None  # a Jinja2 template that replaces the model's own
    kv_cache_dtype: str = "auto"  # "auto" (the model's dtype) | "float16": half the KV memory and reads
    # None | "int8": dynamic int8 linear layers (CPU only) | "q8_0" / "q4_0": the linear layers
    # quantized at load into that GGUF block format (CPU, dtype auto: engine/layers/block_quantize.py)
    quantization: str | None = None
    cpu_kernels: bool = True  # the C++ decoder stack on CPU when it builds (GPTSERVE_CPU_KERNELS=0: off, and float32)
    fault_injection_step: int | None = None  # tests only: the forward pass of this step raises

    def __post_init__(self) -> None:
        if self.model is not None and not os.path.exists(self.model):
            raise ValueError(f"model path does not exist: {self.model}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be at least 1")
        if self.max_decode_slowdown != 0 and self.max_decode_slowdown <= 1:
            raise ValueError("max_decode_slowdown must be above 1 (or 0: off)")
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("num_kv_blocks must be at least 1")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError("kv_cache_memory_gb must be positive")
        if self.kv_cache_dtype not in ("auto", "float16"):
            raise ValueError(f"unsupported kv_cache_dtype {self.kv_cache_dtype!r} (supported: auto, float16)")
        if self.quantization not in (None, "int8", "q8_0", "q4_0"):
            raise ValueError(f"unsupported quantization {self.quantization!r} (supported: int8, q8_0, q4_0)")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be at least 1")
