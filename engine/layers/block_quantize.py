"""``--quantization q8_0|q4_0``: float weights quantized at load into the GGUF block formats the
C++ kernels run (engine/layers/blocks.py), byte for byte as llama.cpp's llama-quantize would write
them without an importance matrix (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref;
gguf.quants.quantize is the same arithmetic in numpy). Here in torch: the same float32 operations
in the same order, on all cores and a block of rows at a time (gguf's numpy takes a minute for a
135M model).

Which tensors, after llama-quantize's choices: the decoder's linear layers get the chosen format;
the output layer gets more bits (llama.cpp: Q6_K beside Q4_0; here Q8_0, the nearest format with a
native kernel), and when it is tied to the token embeddings, they are that Q8_0 tensor too (as in
SmolLM2's GGUF files). Untied embeddings stay as loaded: a step reads a few of their rows. A
matrix whose rows are not whole blocks of 32 stays as loaded; so does one already in a native
block format (a GGUF file's Q4_1, say).
"""
from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.layers.blocks import HALF_DTYPES, BlockTensor

QUANTIZATIONS = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
_ROWS_AT_ONCE = 1 << 22  # values quantized per pass: bounds the float32 temporaries to ~100 MB

OUTPUT_TYPE = GGMLQuantizationType.Q8_0
EMBEDDING = "model.embed_tokens.weight"
OUTPUT = "lm_head.weight"


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (halves away from zero) exactly: floor(|x| + 0.5) would round 0.49999997 up."""
    a = x.abs()
    floor = a.floor()
    return x.sign() * (floor + (2 * (a - floor)).floor())


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def quantize_blocks(x: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """float32 (n, 32) blocks -> uint8 (n, block bytes) of ``qtype`` (Q8_0 or Q4_0)."""
    if qtype == GGMLQuantizationType.Q8_0:
        d = x.abs().amax(1, keepdim=True) / 127  # (n, 1)
        qs = _roundf(x * _inverse(d)).to(torch.int8).view(torch.uint8)
    elif qtype == GGMLQuantizationType.Q4_0:
        # the value of largest magnitude, sign kept (the first of equals), maps to -8
        d = x.gather(1, x.abs().argmax(1, keepdim=True)) / -8
        q = (x * _inverse(d) + 8.5).trunc().clamp_(0, 15).to(torch.uint8)
        qs = q[:, :16] | (q[:, 16:] << 4)
    else:
        raise ValueError(f"no quantizer for {qtype.name}")
    return torch.cat([d.to(torch.float16).view(torch.uint8), qs], dim=1)


def quantize(weight: torch.Tensor | BlockTensor, qtype: GGMLQuantizationType) -> BlockTensor:
    """A float32 tensor or an F16/BF16 BlockTensor (rows, cols), cols a multiple of 32 -> ``qtype`` blocks."""
    rows, cols = weight.shape
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    out = torch.empty(rows, cols // block_size * type_size, dtype=torch.uint8)
    step = max(1, _ROWS_AT_ONCE // cols)
    for r in range(0, rows, step):
        if isinstance(weight, BlockTensor):
            part = weight.raw[r : r + step].view(HALF_DTYPES[weight.qtype]).float()
        else:
            part = weight[r : r + step].float()
        out[r : r + step] = quantize_blocks(part.reshape(-1, block_size), qtype).view(part.shape[0], -1)
    return BlockTensor(out, qtype, (rows, cols))


def _is_float(weight) -> bool:
    return weight.qtype in HALF_DTYPES if isinstance(weight, BlockTensor) else weight.is_floating_point()


def quantize_weights(weights: dict, qtype: GGMLQuantizationType, tie_word_embeddings: bool) -> dict:
    """A Llama-family checkpoint's tensors (Hugging Face names) with the linear layers quantized."""
    out = {}
    for name, weight in weights.items():
        is_output = name == OUTPUT or (name == EMBEDDING and tie_word_embeddings)
        if len(weight.shape) != 2 or not _is_float(weight) or weight.shape[1] % 32 or (
                name == EMBEDDING and not is_output):
            out[name] = weight
        else:
            out[name] = quantize(weight, OUTPUT_TYPE if is_output else qtype)
    return out
