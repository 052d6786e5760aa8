"""Building the model to serve from an EngineConfig: device and dtype, the checkpoint's weights,
the model, int8 if asked, and its attention backend (engine/layers/attention_backend.py).

The weights take one of two roads:

- kept as the file stores them (dtype auto on the CPU, the C++ kernels loaded): a GGUF file's
  block formats memory-mapped, a Hugging Face folder's float16/bfloat16 matrices, or
  ``quantization`` q8_0/q4_0 quantized at load (engine/layers/blocks.py, block_quantize.py);
- dense in the model's dtype on its device (float32: the reference; bfloat16 on CUDA): each
  matrix dequantized into that dtype there, a few rows at a time, before the next, so the host
  never holds the model (nor one whole matrix) in float32.

Either way the model is built on the meta device and takes the loaded tensors themselves, so
nothing is allocated twice. LLMEngine calls ``build_model`` once; the model runner sizes the KV
pool from what it returns.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from engine.config import EngineConfig
from engine.layers import cpu_kernels
from engine.layers.attention import AttentionRow
from engine.layers.attention_backend import AttentionBackend, TorchBackend, select_backend
from engine.layers.block_quantize import QUANTIZATIONS, quantize_weights
from engine.layers.blocks import BlockTensor
from engine.layers.quant import CALIBRATION_TEXT, quantize_int8
from engine.loader import default_model_path, load_checkpoint
from engine.loader.weights_format import weights_format
from engine.models.config import ModelConfig
from engine.models.registry import BLOCK_ARCHITECTURES, INT8_ARCHITECTURES, model_class
from engine.tokenizer import Tokenizer

logger = logging.getLogger("gptserve.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer
    attention: AttentionBackend  # computes the decoder layers and builds their per-step metadata
    device: torch.device
    dtype: torch.dtype  # of the dense tensors (activations, the KV cache unless asked otherwise)
    max_model_len: int
    keeps_file_quantization: bool  # the weights compute in the checkpoint's own formats
    weight_formats: str  # "Q4_1 x210, Q8_0 x1, F32 x61": the formats the weights are held in
    quantization: str  # /v1/models': "int8", "Q8_0" / "Q4_0" quantized at load, else the file's format


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: EngineConfig) -> LoadedModel:
    """Load ``config.model`` (default: the built-in SmolLM2) as the engine serves it. ValueError
    for options the model or this machine cannot take."""
    path = config.model or default_model_path()
    device = resolve_device(config.device)
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[config.dtype]
    if device.type == "cpu" and config.num_threads:
        torch.set_num_threads(config.num_threads)
    keeps_file_quantization = _keeps_file_quantization(config, path, device)
    # mapped, not unpacked: the dense road below dequantizes one tensor at a time
    model_config, weights = load_checkpoint(path, keep_quantized=True)
    architecture = model_config.architecture
    if config.quantization == "int8" and architecture not in INT8_ARCHITECTURES:
        raise ValueError(f"quantization 'int8' does not cover the {architecture} family yet")
    if config.quantization in QUANTIZATIONS:
        if architecture not in BLOCK_ARCHITECTURES:
            raise ValueError(f"quantization {config.quantization!r} does not cover the {architecture} family yet")
        weights = quantize_weights(weights, QUANTIZATIONS[config.quantization], model_config.tie_word_embeddings)
    if architecture not in BLOCK_ARCHITECTURES:  # its layers have no block-format kind yet
        keeps_file_quantization = False
    if not keeps_file_quantization:
        _to_dense(weights, device, dtype)
    weight_formats = _weight_formats(weights)
    tokenizer = Tokenizer.load(path, chat_template=config.chat_template)
    max_model_len = min(config.max_model_len or model_config.max_position_embeddings,
                        model_config.max_position_embeddings)
    torch.manual_seed(config.seed)
    with torch.device("meta"):  # no allocation: load_weights puts the loaded tensors in
        model = model_class(architecture)(model_config, max_model_len)
    model.load_weights(weights)
    del weights
    model.reset_rotary(torch.device("cpu"))
    model = model.to(device=device, dtype=dtype).eval()
    model.reset_rotary(device)  # float32 tables, computed for real (not meta)
    if config.quantization == "int8":
        calibrate = functools.partial(calibration_forward, model, tokenizer, max_model_len, device, dtype)
        model = quantize_int8(model, device, calibrate)
    attention = select_backend(model, device, config.cpu_kernels)
    logger.info("decoder layers: %s; weights: %s", attention.description, weight_formats)
    quantization = (QUANTIZATIONS[config.quantization].name if config.quantization in QUANTIZATIONS
                    else config.quantization or weights_format(path))
    return LoadedModel(model, model_config, tokenizer, attention, device, dtype, max_model_len,
                       keeps_file_quantization, weight_formats, quantization)


def _keeps_file_quantization(config: EngineConfig, path: str, device: torch.device) -> bool:
    """dtype "auto" on the CPU computes the formats a checkpoint stores as they are (a GGUF
    file's Q4_0/Q4_1/Q8_0/F16/BF16, a Hugging Face folder's float16/bfloat16 matrices; the C++
    kernels must load); otherwise the weights are dequantized (float32: the reference).
    ``quantization`` q8_0/q4_0 quantizes what was kept."""
    if config.quantization in QUANTIZATIONS:
        _check_block_quantization(config, path, device)
        return True
    if config.dtype != "auto" or device.type != "cpu" or config.quantization is not None:
        return False
    return cpu_kernels.enabled_by_env() and cpu_kernels.load() is not None


def _check_block_quantization(config: EngineConfig, path: str, device: torch.device) -> None:
    quantization = config.quantization
    if device.type != "cpu" or config.dtype != "auto":
        raise ValueError(f"quantization {quantization!r} is for the CPU with dtype auto")
    stored = weights_format(path)
    if stored not in ("F32", "F16", "BF16"):  # as llama-quantize, which requantizes only when told
        raise ValueError(f"quantization {quantization!r} quantizes float weights; this checkpoint's are "
                         f"already {stored}")
    if not cpu_kernels.enabled_by_env() or cpu_kernels.load() is None:
        raise ValueError(f"quantization {quantization!r} needs the C++ CPU kernels "
                         "(engine/layers/cpu_kernels.py), which are off or did not build here")


def _to_dense(weights: dict, device: torch.device, dtype: torch.dtype) -> None:
    """In place: every block-format weight dequantized straight into ``dtype`` on ``device``, a few
    rows at a time (BlockTensor.dequantize_to); the small float32 rest (norms, biases) is cast
    with the model."""
    for name, weight in weights.items():
        if isinstance(weight, BlockTensor):
            weights[name] = weight.dequantize_to(device, dtype)


def _weight_formats(weights: dict) -> str:
    """"Q4_1 x210, Q8_0 x1, F32 x61": the formats the weights are held in."""
    counts: dict[str, int] = {}
    for w in weights.values():
        name = w.qtype.name if isinstance(w, BlockTensor) else "F32"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


@torch.inference_mode()
def calibration_forward(model: nn.Module, tokenizer: Tokenizer, max_model_len: int, device: torch.device,
                        dtype: torch.dtype) -> None:
    """One prefill of a fixed text through the model's Python layers and a scratch KV cache, every
    position's logits too (int8 smoothing records each layer's input range from it)."""
    ids = tokenizer.encode(CALIBRATION_TEXT, add_special_tokens=False)[:max_model_len]
    cfg, block_size, n = model.config, 16, len(ids)
    num_blocks = -(-n // block_size)
    cache = torch.zeros(cfg.num_hidden_layers, 2, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim,
                        device=device, dtype=dtype)
    attention = TorchBackend(model, device)
    meta = attention.build_metadata([AttentionRow(0, n, list(range(num_blocks)))], block_size)
    hidden = attention.forward(torch.tensor(ids, device=device), torch.arange(n, device=device), cache, meta)
    model.compute_logits(hidden)
