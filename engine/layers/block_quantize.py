"""``--quantization q8_0|q4_0``: float weights quantized at load into the GGUF block formats the
C++ kernels run (engine/layers/blocks.py), byte for byte as llama.cpp's llama-quantize would write
them without an importance matrix: gguf.quants.quantize is ggml's reference quantizers
(ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref) in numpy, bit-exact. It runs here
on blocks of rows, one per thread (numpy lets go of the GIL): a 135M model takes a few seconds
on one core (a torch copy of the same arithmetic was no faster).

Which tensors, after llama-quantize's choices: the decoder's linear layers get the chosen format;
the output layer gets more bits (llama.cpp: Q6_K beside Q4_0; here Q8_0, the nearest format gguf's Python quantizers write, with a
native kernel), and when it is tied to the token embeddings, they are that Q8_0 tensor too (as in
SmolLM2's GGUF files). Untied embeddings stay as loaded: a step reads a few of their rows. A
matrix whose rows are not whole blocks of 32 stays as loaded.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from engine.layers.blocks import HALF_DTYPES, BlockTensor

QUANTIZATIONS = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
OUTPUT_TYPE = GGMLQuantizationType.Q8_0
EMBEDDING = "model.embed_tokens.weight"
OUTPUT = "lm_head.weight"
VALUES_AT_ONCE = 1 << 20  # per task: bounds numpy's float32 temporaries to tens of MB per thread


def quantize(weight: torch.Tensor | BlockTensor, qtype: GGMLQuantizationType) -> BlockTensor:
    """A float32 tensor or an F16/BF16 BlockTensor (rows, cols), cols a multiple of 32 -> ``qtype`` blocks."""
    rows, cols = weight.shape
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    out = np.empty((rows, cols // block_size * type_size), dtype=np.uint8)
    step = max(1, VALUES_AT_ONCE // cols)

    def quantize_rows(start: int) -> None:
        if isinstance(weight, BlockTensor):
            part = weight.raw[start : start + step].view(HALF_DTYPES[weight.qtype])
        else:
            part = weight[start : start + step]
        out[start : start + step] = gguf_quantize(part.float().numpy(), qtype)

    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        list(pool.map(quantize_rows, range(0, rows, step)))
    return BlockTensor(torch.from_numpy(out), qtype, (rows, cols))


def _is_float(weight) -> bool:
    return weight.qtype in HALF_DTYPES if isinstance(weight, BlockTensor) else weight.is_floating_point()


def quantize_weights(weights: dict, qtype: GGMLQuantizationType, tie_word_embeddings: bool) -> dict:
    """A Llama-family checkpoint's tensors (Hugging Face names) with the linear layers quantized."""
    out = {}
    for name, weight in weights.items():
        is_output = name == OUTPUT or (name == EMBEDDING and tie_word_embeddings)
        is_linear = name != EMBEDDING and len(weight.shape) == 2
        if (is_output or is_linear) and _is_float(weight) and weight.shape[1] % 32 == 0:
            weight = quantize(weight, OUTPUT_TYPE if is_output else qtype)
        out[name] = weight
    return out
