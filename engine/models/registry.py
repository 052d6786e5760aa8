"""Architecture name (ModelConfig.architecture) → the model class that computes it."""
from __future__ import annotations

import importlib

from torch import nn

# module, class: imported on first use, so loading one family does not import the others
_MODEL_CLASSES = {
    "llama": ("engine.models.llama", "LlamaForCausalLM"),
    "mistral": ("engine.models.llama", "LlamaForCausalLM"),
    "qwen2": ("engine.models.llama", "LlamaForCausalLM"),
    "qwen3": ("engine.models.llama", "LlamaForCausalLM"),
    "gpt2": ("engine.models.gpt2", "GPT2LMHeadModel"),
    "gemma2": ("engine.models.gemma3", "Gemma3ForCausalLM"),
    "gemma3": ("engine.models.gemma3", "Gemma3ForCausalLM"),
    "phi3": ("engine.models.llama", "LlamaForCausalLM"),
}

# Families whose model takes GGUF block-format weights as they are (engine/layers/blocks.py);
# the others get them dequantized to float32.
BLOCK_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt2"})

# Families whose layers engine/layers/quant.py knows how to smooth and swap for int8.
INT8_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODEL_CLASSES:
        raise ValueError(f"no model for architecture {architecture!r}; supported: {', '.join(_MODEL_CLASSES)}")
    module, name = _MODEL_CLASSES[architecture]
    return getattr(importlib.import_module(module), name)
